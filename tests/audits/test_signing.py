"""Tests for canonical JSON, atomic writes, Ed25519 keys, report signing and verification."""

from __future__ import annotations

import json
import math
import os
import random
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safealign.audits import canonical
from safealign.audits.canonical import (
    atomic_write_bytes,
    atomic_write_text,
    canonical_json,
    sha256_file,
)
from safealign.audits.signing import (
    Problem,
    VerificationResult,
    build_manifest,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sign_report,
    verify_report,
    write_report,
)
from safealign.errors import DataError, SignatureError
from tests.audits._real_report import write_real_report

BYTE_CHECKS = {"json", "canonical", "signature", "pinned-key"}

# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def signed_report(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    """A signed report in ``tmp_path/out`` with two artifacts, one in a subdirectory."""
    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    (out / "config.yaml").write_text("seed: 7\n")
    (out / "model" / "weights.bin").write_bytes(bytes(range(256)) * 64)
    report = {
        "schema_version": 1,
        "title": "Rapport d'audit — δ≤0.05",
        "metrics": {"privacy/epsilon": 2.9999999999999996, "safety/upper_bound": 1e-07},
        "certified": False,
        "groups": [{"name": "a", "reward": -0.0}, {"name": "b", "reward": None}],
        "artifacts": build_manifest(
            [out / "model" / "weights.bin", out / "config.yaml"], base_dir=out
        ),
    }
    signed = sign_report(report, load_private_key(keys[0]), base_dir=out)
    return write_report(signed, out / "report.json")


# ---------------------------------------------------------------------------------------------
# Canonical JSON


def test_canonical_json_is_sorted_compact_utf8() -> None:
    out = canonical_json({"b": [1, 2.5, None, True], "a": {"z": "é", "y": "\n"}})
    assert out == '{"a":{"y":"\\n","z":"é"},"b":[1,2.5,null,true]}'.encode()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_canonical_json_rejects_non_finite_floats(bad: float) -> None:
    with pytest.raises(DataError, match=r"\$\.metrics\.eps\[1\]"):
        canonical_json({"metrics": {"eps": [1.0, bad]}})


@pytest.mark.parametrize(
    ("value", "match"),
    [({1: "a"}, "str keys"), ({"a": {1, 2}}, "type set"), ({"s": "\ud800"}, "UTF-8")],
)
def test_canonical_json_rejects_values_that_do_not_round_trip(value: object, match: str) -> None:
    with pytest.raises(DataError, match=match):
        canonical_json(value)


def test_canonical_json_rejects_circular_reference() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(DataError, match="circular"):
        canonical_json(loop)


def test_float_repr_round_trips_exactly() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        (x,) = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))
        if math.isfinite(x):
            assert json.loads(canonical_json([x]))[0] == x


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None, database=None)
@given(json_values)
def test_canonical_json_is_a_fixed_point_of_parsing(value: object) -> None:
    data = canonical_json(value)
    assert canonical_json(json.loads(data.decode("utf-8"))) == data


# ---------------------------------------------------------------------------------------------
# Hashing and atomic writes


def test_sha256_file_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    import hashlib

    data = os.urandom((1 << 20) * 2 + 123)  # spans several read chunks
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    atomic_write_text(target, "old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


@pytest.mark.parametrize("failing", ["replace", "fsync", "write"])
def test_atomic_write_failure_keeps_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "report.json"
    target.write_bytes(b"old content")

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(canonical.os, failing, boom)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(target, b"new content that never lands")
    monkeypatch.undo()
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_atomic_directory_replaces_whole_or_keeps_the_old_one(tmp_path: Path) -> None:
    from safealign._atomic import atomic_directory

    target = tmp_path / "policy"
    with atomic_directory(target) as staging:
        (staging / "a.json").write_text("old")
    with pytest.raises(RuntimeError, match="crash"), atomic_directory(target) as staging:
        (staging / "a.json").write_text("half")
        raise RuntimeError("crash while writing")
    assert [p.name for p in target.iterdir()] == ["a.json"] and (
        target / "a.json"
    ).read_text() == "old"
    with atomic_directory(target) as staging:
        (staging / "b.json").write_text("new")
    assert [p.name for p in target.iterdir()] == ["b.json"]  # replaced whole, nothing merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]  # no staging left


def test_atomic_write_modes(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "new", b"x")
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o644
        (tmp_path / "kept").write_bytes(b"x")
        os.chmod(tmp_path / "kept", 0o640)
        atomic_write_bytes(tmp_path / "kept", b"y")  # an existing file keeps its mode
        assert stat.S_IMODE((tmp_path / "kept").stat().st_mode) == 0o640
        atomic_write_bytes(tmp_path / "exact", b"z", mode=0o600)
        assert stat.S_IMODE((tmp_path / "exact").stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)


# ---------------------------------------------------------------------------------------------
# Keys


def test_private_key_is_0600_from_creation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No secret byte is ever written to a file others can read, even under a lax umask."""
    modes_at_write: list[int] = []
    real_write = os.write

    def spying_write(fd: int, data: bytes) -> int:
        if b"PRIVATE KEY" in bytes(data):
            modes_at_write.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    monkeypatch.setattr(canonical.os, "write", spying_write)
    old_umask = os.umask(0)
    try:
        private_path, public_path = generate_keypair(tmp_path / "k")
    finally:
        os.umask(old_umask)
    assert modes_at_write == [0o600]
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    assert b"BEGIN PRIVATE KEY" in private_path.read_bytes()
    assert b"BEGIN PUBLIC KEY" in public_path.read_bytes()
    assert load_private_key(private_path).public_key() == load_public_key(public_path)


def test_generate_keypair_refuses_to_overwrite(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path)
    before = private_path.read_bytes()
    with pytest.raises(DataError, match="overwrite=True") as info:
        generate_keypair(tmp_path)
    assert info.value.path == str(private_path)
    assert private_path.read_bytes() == before
    generate_keypair(tmp_path, overwrite=True)
    assert private_path.read_bytes() != before
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600


@pytest.mark.parametrize("loader", [load_private_key, load_public_key])
def test_corrupt_pem_names_the_file(tmp_path: Path, loader: Callable[[Path], object]) -> None:
    bad = tmp_path / "broken.pem"
    bad.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n")
    if loader is load_public_key:
        bad.write_bytes(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(DataError, match="broken.pem"):
        loader(bad)
    with pytest.raises(DataError, match="not found"):
        loader(tmp_path / "absent.pem")


def test_swapped_key_files_are_explained(keys: tuple[Path, Path]) -> None:
    private_path, public_path = keys
    with pytest.raises(DataError, match="this is a public key"):
        load_private_key(public_path)
    with pytest.raises(DataError, match="this is a private key"):
        load_public_key(private_path)


def test_non_ed25519_key_is_rejected(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.pem"
    path.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(DataError, match="Ed25519"):
        load_private_key(path)


# ---------------------------------------------------------------------------------------------
# Signing and verification


def byte_level(result: VerificationResult) -> list[Problem]:
    """The problems of the bytes and the signature alone (the toy report fails the schema)."""
    return [p for p in result.problems if p.check in BYTE_CHECKS]


@pytest.fixture
def real_report(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    return write_real_report(tmp_path / "run", load_private_key(keys[0]))


def test_sign_verify_round_trip(real_report: Path, keys: tuple[Path, Path]) -> None:
    public_key = load_public_key(keys[1])
    result = verify_report(real_report, public_key=public_key)
    assert result == VerificationResult(
        valid=True, problems=(), checked_artifacts=4, key_pinned=True, key_id=key_id(public_key)
    )
    result.raise_if_invalid()
    report = json.loads(real_report.read_bytes())
    assert [a["path"] for a in report["artifacts"]] == [  # sorted, relative, POSIX
        "config.resolved.yaml",
        "reward_model/adapter.safetensors",
    ]
    assert [a["path"] for a in report["renderings"]] == ["report.html", "report.md"]
    assert report["signer"] == {"key_id": key_id(public_key), "demo_key": False}
    assert report["signature"]["algorithm"] == "ed25519"
    assert report["signature"]["key_id"] == key_id(public_key)
    assert len(report["signature"]["key_id"]) == 16


def test_unpinned_verification_says_so(real_report: Path) -> None:
    result = verify_report(real_report)
    assert result.valid
    assert result.key_pinned is False


def test_sign_report_does_not_mutate_and_resigning_replaces(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    report = {"schema_version": 1, "artifacts": []}
    key = load_private_key(keys[0])
    signed = sign_report(report, key, base_dir=tmp_path)
    assert "signature" not in report
    assert sign_report(signed, key, base_dir=tmp_path) == signed  # Ed25519 is deterministic


def test_wrong_public_key_fails(signed_report: Path, tmp_path: Path) -> None:
    _, other_public = generate_keypair(tmp_path / "other")
    other = load_public_key(other_public)
    result = verify_report(signed_report, public_key=other)
    assert not result.valid
    assert result.key_pinned
    assert any(f"not by the expected key {key_id(other)}" in p.message for p in result.problems)
    assert {"pinned-key", "signature"} <= result.failed_checks
    with pytest.raises(SignatureError, match="does not verify"):
        result.raise_if_invalid()


def test_every_single_byte_flip_breaks_verification(
    signed_report: Path, keys: tuple[Path, Path]
) -> None:
    public_key = load_public_key(keys[1])
    original = signed_report.read_bytes()
    # The byte layer alone must catch every flip (the toy report is not schema-valid; the content
    # checks are attacked in test_verify_attacks). Three flips per position: a low bit (stays printable ASCII, e.g. a digit or base64 char),
    # the case bit, and the high bit (breaks UTF-8). Together they hit every byte of the body,
    # the signature object and the trailing newline. Substitutions that decode to the same
    # base64 bytes are covered by test_base64_variants_with_same_decoding_are_rejected.
    survivors = []
    for position in range(len(original)):
        for mask in (0x01, 0x20, 0x80):
            mutated = bytearray(original)
            mutated[position] ^= mask
            signed_report.write_bytes(bytes(mutated))
            for key in (public_key, None):
                if not byte_level(verify_report(signed_report, public_key=key)):
                    survivors.append((position, mask, key is None))
    signed_report.write_bytes(original)
    assert not byte_level(verify_report(signed_report, public_key=public_key))
    assert survivors == []


def test_base64_variants_with_same_decoding_are_rejected(
    signed_report: Path, keys: tuple[Path, Path]
) -> None:
    """``b64decode`` ignores the unused bits of the last character; the verifier must not."""
    report = json.loads(signed_report.read_bytes())
    value = report["signature"]["value"]  # 64 bytes: 86 chars + "==", 4 unused bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(value[-3])
    report["signature"]["value"] = value[:-3] + alphabet[last ^ 1] + "=="
    signed_report.write_bytes(canonical_json(report) + b"\n")
    result = verify_report(signed_report, public_key=load_public_key(keys[1]))
    assert not result.valid
    assert any("canonical base64" in p.message for p in byte_level(result))


@pytest.mark.parametrize(
    "rewrite",
    [
        lambda r: json.dumps(r, sort_keys=True, ensure_ascii=False, indent=2).encode(),
        lambda r: json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode(),  # key order
        lambda r: json.dumps(r, sort_keys=True, separators=(",", ":")).encode(),  # \u escapes
        lambda r: canonical_json(r) + b"\n\n",
    ],
)
def test_same_value_in_other_bytes_is_rejected(
    signed_report: Path, rewrite: Callable[[dict], bytes]
) -> None:
    """Re-serializing the parsed report would accept these; the canonical-bytes check does not."""
    report = json.loads(signed_report.read_bytes())
    report = {"title": report.pop("title"), **report}  # not in sorted order
    signed_report.write_bytes(rewrite(report))
    result = verify_report(signed_report)
    assert not result.valid
    assert [p for p in byte_level(result) if "canonical JSON form" in p.message]


def test_tampered_and_missing_artifacts_are_named(
    signed_report: Path, keys: tuple[Path, Path]
) -> None:
    out = signed_report.parent
    weights = out / "model" / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    (out / "config.yaml").unlink()
    result = verify_report(signed_report, public_key=load_public_key(keys[1]))
    assert not result.valid
    assert result.checked_artifacts == 1
    problems = [p for p in result.problems if p.check == "artifact"]
    assert len(problems) == 2
    assert "'model/weights.bin' has changed" in problems[1].message
    assert "'config.yaml' is missing" in problems[0].message


def test_malformed_json_is_a_result_not_a_traceback(tmp_path: Path) -> None:
    for name, data in [
        ("trunc", b'{"a": '),
        ("dup", b'{"a":1,"a":1}'),
        ("nan", b'{"a":NaN}'),
        ("latin1", b'{"a":"\xe9"}'),
        ("list", b"[1]"),
        ("surrogate", b'{"a":"\\ud800"}'),
    ]:
        path = tmp_path / f"{name}.json"
        path.write_bytes(data)
        result = verify_report(path)
        assert not result.valid and result.bad_input, name
        assert result.problems and str(path) in result.problems[0].message, name
    missing = verify_report(tmp_path / "absent.json")
    assert not missing.valid and missing.bad_input and "cannot read" in missing.problems[0].message


def test_unsigned_report_is_invalid(tmp_path: Path) -> None:
    path = write_report({"schema_version": 1, "artifacts": []}, tmp_path / "r.json")
    result = verify_report(path)
    assert not result.valid
    assert "not signed" in result.problems[0].message


@pytest.mark.parametrize("bad_path", ["../secret", "/etc/passwd", "a/../../b", "C:\\x"])
def test_manifest_paths_cannot_escape_the_report_dir(
    tmp_path: Path, keys: tuple[Path, Path], bad_path: str
) -> None:
    report = {"artifacts": [{"path": bad_path, "sha256": "0" * 64}]}
    with pytest.raises(DataError, match="relative to the report directory"):
        sign_report(report, load_private_key(keys[0]), base_dir=tmp_path)


def test_sign_report_refuses_a_stale_manifest(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    (tmp_path / "data.jsonl").write_text("{}\n")
    manifest = build_manifest([tmp_path / "data.jsonl"], base_dir=tmp_path)
    (tmp_path / "data.jsonl").write_text("{}\n{}\n")
    with pytest.raises(DataError, match="'data.jsonl' has changed"):
        sign_report({"artifacts": manifest}, load_private_key(keys[0]), base_dir=tmp_path)


def test_build_manifest_sorts_dedupes_and_rejects_outside_files(tmp_path: Path) -> None:
    base = tmp_path / "out"
    base.mkdir()
    for name in ("b.txt", "a.txt"):
        (base / name).write_text(name)
    manifest = build_manifest([base / "b.txt", base / "a.txt", base / "b.txt"], base_dir=base)
    assert [e["path"] for e in manifest] == ["a.txt", "b.txt"]
    assert manifest[0]["sha256"] == sha256_file(base / "a.txt")
    (tmp_path / "outside.txt").write_text("x")
    with pytest.raises(DataError, match="outside the report directory"):
        build_manifest([tmp_path / "outside.txt"], base_dir=base)
    with pytest.raises(DataError, match="does not exist"):
        build_manifest([base / "nope.txt"], base_dir=base)


def test_sign_report_rejects_non_json_values(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    with pytest.raises(DataError, match=r"\$\.metrics\.x"):
        sign_report({"metrics": {"x": math.nan}}, load_private_key(keys[0]), base_dir=tmp_path)
