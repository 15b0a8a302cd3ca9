"""The bad-input matrix: every kind of bad input a user can give, through the real CLI entry point.

Each row names a kind of bad input, makes it under ``tmp_path``, runs ``safealign.cli.main`` in
process and expects an exit code and a message fragment on stderr, never a traceback. The suite
itself measures how many kinds are handled: the module prints "bad-input matrix: N of M kinds
handled" at the end (and every test id names its kind).

No row trains anything: config mistakes are found at load time and run-level ones by the run's
pre-flight check, before any privacy or safety test is spent. Add a row by appending a
:class:`Case` to the table of its topic; the ledger and ``audit verify`` tables are at the end.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from safealign.cli import main

#: (kind, handled) of every row that ran in this session, for the closing summary line.
_OUTCOMES: dict[str, bool] = {}


@dataclass(frozen=True)
class Case:
    """One kind of bad input.

    Attributes:
        kind: Short name (the test id).
        make: ``make(tmp, monkeypatch) -> argv``: writes the bad input under ``tmp`` and returns
            the command line (without the program name).
        code: The expected exit code.
        message: A fragment expected on stderr; ``{tmp}`` is replaced by the temporary directory.
    """

    kind: str
    make: Callable[[Path, pytest.MonkeyPatch], list[str]]
    code: int
    message: str


GOOD = {"prompt": "p", "chosen": "a", "rejected": "b"}


def _jsonl(text: str, *options: str):
    """A ``data validate`` case on a file whose first line is ``text`` (a second line is good)."""

    def make(tmp: Path, _mp) -> list[str]:
        path = tmp / "bad.jsonl"
        path.write_text(text + "\n" + json.dumps({**GOOD, "prompt": "q"}) + "\n", encoding="utf-8")
        return ["data", "validate", str(path), *options]

    return make


def _bytes(data: bytes, name: str = "bad.jsonl"):
    def make(tmp: Path, _mp) -> list[str]:
        (tmp / name).write_bytes(data)
        return ["data", "validate", str(tmp / name)]

    return make


def _row(**fields) -> str:
    return json.dumps({**GOOD, **fields})


def _truncated_gzip(tmp: Path, _mp) -> list[str]:
    blob = gzip.compress(("".join(_row(prompt=f"p{i}") + "\n" for i in range(200))).encode())
    (tmp / "bad.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    return ["data", "validate", str(tmp / "bad.jsonl.gz")]


def _unreadable(tmp: Path, mp: pytest.MonkeyPatch) -> list[str]:
    path = tmp / "bad.jsonl"
    path.write_text(_row() + "\n")
    path.chmod(0)
    if os.geteuid() == 0:  # root reads any file: make the OS refuse the way it refuses a user
        real_open = open

        def refusing_open(file, *args, **kwargs):
            if Path(file) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        mp.setattr("builtins.open", refusing_open)
    return ["data", "validate", str(path)]


def _missing(tmp: Path, _mp) -> list[str]:
    return ["data", "validate", str(tmp / "absent.jsonl")]


def _directory(tmp: Path, _mp) -> list[str]:
    (tmp / "dir.jsonl").mkdir()
    return ["data", "validate", str(tmp / "dir.jsonl")]


def _name_too_long(tmp: Path, _mp) -> list[str]:
    return ["data", "validate", str(tmp / ("a" * 300 + ".jsonl"))]


def _csv_field_too_large(tmp: Path, _mp) -> list[str]:
    path = tmp / "bad.csv"
    path.write_text("id,prompt,type,label\n1," + "x" * 200_000 + ",homonyms,safe\n")
    return ["data", "validate", str(path), "--format", "xstest_prompts"]


def _responses(text: str):
    """A ``score`` case: the responses file is read before the model is loaded."""

    def make(tmp: Path, _mp) -> list[str]:
        (tmp / "r.jsonl").write_text(text + "\n", encoding="utf-8")
        return [
            "score",
            str(tmp / "r.jsonl"),
            "--model",
            str(tmp / "model"),
            "--out",
            str(tmp / "o"),
        ]

    return make


DEEP = "[" * 100_000 + "]" * 100_000

# fmt: off
DATA_CASES = [
    Case("data-deep-nesting", _jsonl(_row()[:-1] + ', "m": ' + DEEP + "}"),
         2, "{tmp}/bad.jsonl:1: nested more than"),
    Case("data-unreadable", _unreadable, 2, "{tmp}/bad.jsonl: cannot read the file (Permission denied)"),
    Case("data-5000-digit-integer", _jsonl(_row()[:-1] + ', "user_id": ' + "7" * 5000 + "}"),
         2, "{tmp}/bad.jsonl:1: an integer with 5000 digits"),
    Case("data-lone-surrogate", _jsonl('{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}'),
         2, "{tmp}/bad.jsonl:1: field 'prompt' holds a lone surrogate"),
    Case("data-duplicate-key", _jsonl('{"prompt": "p", "chosen": "a", "rejected": "b", "chosen": "c"}'),
         2, "{tmp}/bad.jsonl:1: duplicate key 'chosen'"),
    Case("data-nan-constant", _jsonl(_row()[:-1] + ', "score": NaN}'),
         2, "{tmp}/bad.jsonl:1: NaN is not JSON"),
    Case("data-missing-field", _jsonl('{"prompt": "p", "rejected": "b"}', "--format", "jsonl"),
         2, "{tmp}/bad.jsonl:1: field 'chosen' is missing"),
    Case("data-wrong-type", _jsonl(_row(chosen=5)), 2, "{tmp}/bad.jsonl:1: field 'chosen' must be a string"),
    Case("data-identical-responses", _jsonl(_row(rejected="a")), 2, "{tmp}/bad.jsonl:1: fields 'chosen' and"),
    Case("data-empty-file", _bytes(b""), 2, "{tmp}/bad.jsonl: the file is empty"),
    Case("data-non-utf8", _bytes(b"\xff\xfe not utf8\n"), 2, "{tmp}/bad.jsonl:1: not valid UTF-8"),
    Case("data-truncated-gzip", _truncated_gzip, 2, "gzip stream is corrupt or truncated"),
    Case("data-not-json", _bytes((_row() + "\n{oops\n").encode()), 2, "{tmp}/bad.jsonl:2: not valid JSON"),
    Case("data-not-an-object", _jsonl("[1, 2]"), 2, "{tmp}/bad.jsonl:1: expected a JSON object, got list"),
    Case("data-missing-file", _missing, 2, "{tmp}/absent.jsonl: file not found"),
    Case("data-directory", _directory, 2, "{tmp}/dir.jsonl: is a directory"),
    Case("data-name-too-long", _name_too_long, 2, "cannot read the file (File name too long)"),
    Case("data-csv-field-too-large", _csv_field_too_large, 2, "{tmp}/bad.csv:2: not valid CSV"),
    Case("responses-duplicate-key", _responses('{"prompt": "p", "response": "a", "response": "b"}'),
         2, "{tmp}/r.jsonl:1: duplicate key 'response'"),
    Case("responses-lone-surrogate", _responses('{"prompt": "p", "response": "\\udfff"}'),
         2, "{tmp}/r.jsonl:1: field 'response' holds a lone surrogate"),
]
# fmt: on

# A valid config that would run in seconds: the synthetic world at toy size, feature models.
BASE_CONFIG = """\
seed: 0
data:
  source: synthetic
  synthetic: {{num_prompts: 40, num_users: 10, pairs_per_user: 6, num_candidates: 4}}
reward_model: {{backbone: features, lora: null, train: {{epochs: 1}}}}
cost_model: {{backbone: features, lora: null, train: {{epochs: 1}}}}
budget: {{ledger: {tmp}/ledger.sqlite}}
"""


def _run(extra_yaml: str = "", *overrides: str, command: str = "run"):
    """A ``run`` (or ``command``) case: BASE_CONFIG plus ``extra_yaml``, which may only add
    sections (a section given twice is itself refused), and command-line ``overrides``."""

    def make(tmp: Path, _mp) -> list[str]:
        path = tmp / "c.yaml"
        path.write_text(BASE_CONFIG.format(tmp=tmp) + extra_yaml, encoding="utf-8")
        return [command, str(path), "--out", str(tmp / "out"), *overrides]

    return make


def _run_text(text: str):
    """A ``run`` case on a config file holding exactly ``text``."""

    def make(tmp: Path, _mp) -> list[str]:
        (tmp / "c.yaml").write_bytes(text.encode("utf-8", "surrogatepass"))
        return ["run", str(tmp / "c.yaml"), "--out", str(tmp / "out")]

    return make


def _run_missing_config(tmp: Path, _mp) -> list[str]:
    return ["run", str(tmp / "absent.yaml"), "--out", str(tmp / "out")]


def _with_base(seed_lines: str):
    """A ``run`` case on BASE_CONFIG with its first line, ``seed: 0``, replaced by ``seed_lines``."""

    def make(tmp: Path, _mp) -> list[str]:
        body = BASE_CONFIG.format(tmp=tmp)
        path = tmp / "c.yaml"
        path.write_text(body.replace("seed: 0\n", seed_lines, 1), encoding="utf-8")
        return ["run", str(path), "--out", str(tmp / "out")]

    return make


SEED_RANGE = "seed: must be in [0, 4294967295]"

# fmt: off
CONFIG_CASES = [
    Case("config-unknown-key", _run("safety: {confidenc: 0.9}\n"), 2, "safety.confidenc: unknown key; did you mean 'confidence'?"),
    Case("config-wrong-type", _run("safety: {confidence: high}\n"), 2, "safety.confidence: expected float, got str 'high'"),
    Case("config-bad-override-syntax", _run("", ".seed=1"), 2, "override '.seed=1': expected key.path=value"),
    Case("config-override-not-yaml", _run("", "seed=[1"), 2, "override 'seed=[1': value is not valid YAML"),
    Case("config-seed-1e26", _with_base("seed: 1e26\n"), 2, "seed: expected int, got str '1e26'"),
    Case("config-seed-10**26", _with_base("seed: 100000000000000000000000000\n"), 2, SEED_RANGE),
    Case("config-negative-seed", _with_base("seed: -1\n"), 2, SEED_RANGE),
    Case("config-negative-seed-override", _run("", "seed=-5"), 2, SEED_RANGE),
    Case("config-world-export-negative-seed", lambda tmp, mp: ["world", "export", "--out", str(tmp / "w"), "--seed", "-1"], 2, SEED_RANGE),
    Case("config-demo-negative-seed", lambda tmp, mp: ["demo", "--out", str(tmp / "out"), "--seed", "-1"], 2, SEED_RANGE),
    Case("config-nonexistent-file", _run_missing_config, 2, "{tmp}/absent.yaml: file not found"),
    Case("config-duplicate-key", _with_base("seed: 0\nseed: 1\n"), 2, "line 2: duplicate key 'seed'"),
    Case("config-duplicate-nested-key", _run("safety: {confidence: 0.9, confidence: 0.8}\n"), 2, "duplicate key 'confidence'"),
    Case("config-deep-nesting", _run_text("seed: " + DEEP + "\n"), 2, "nested too deeply"),
    Case("config-5000-digit-integer", _with_base("seed: " + "7" * 5000 + "\n"), 2, "line 1: an integer with 5000 digits"),
    Case("config-huge-integer-for-float", _run("policy: {beta: " + "9" * 400 + "}\n"), 2, "policy.beta: must be a finite number"),
    Case("config-infinite-float", _run("policy: {beta: .inf}\n"), 2, "policy.beta: must be a finite number"),
    Case("config-nul-in-path", _run('audit: {signing_key: "key\\0.pem"}\n'), 2, "audit.signing_key: holds a NUL character"),
    Case("config-lone-surrogate", _run('audit: {signing_key: "\\ud800.pem"}\n'), 2, "audit.signing_key: holds a lone surrogate"),
    Case("config-not-yaml", _run_text("seed: [0\n"), 2, "not valid YAML"),
    Case("config-top-level-list", _run_text("- 1\n"), 2, "the top level must be a mapping"),
    Case("config-non-utf8", lambda tmp, mp: _bytes_config(tmp, b"seed: \xff\n"), 2, "cannot read the file"),
    Case("config-cross-field", _run("safety: {metric: expected_cost, bound: hoeffding}\n"), 2, "safety.cost_range: required by bound 'hoeffding'"),
]
# fmt: on


def _bytes_config(tmp: Path, data: bytes) -> list[str]:
    (tmp / "c.yaml").write_bytes(data)
    return ["run", str(tmp / "c.yaml"), "--out", str(tmp / "out")]


def _key_file(text: str):
    """A ``run`` case whose ``audit.signing_key`` is a file holding ``text``."""

    def make(tmp: Path, mp) -> list[str]:
        (tmp / "key.pem").write_text(text)
        return _run(f"audit: {{signing_key: {tmp}/key.pem}}\n")(tmp, mp)

    return make


def _public_key(tmp: Path, mp) -> list[str]:
    from safealign.audits.signing import generate_keypair

    _, public = generate_keypair(tmp / "keys")
    return _run(f"audit: {{signing_key: {public}}}\n")(tmp, mp)


def _out_is_a_file(command: str):
    def make(tmp: Path, mp) -> list[str]:
        (tmp / "out").write_text("not a directory\n")
        return _run(command=command)(tmp, mp)

    return make


def _ledger_under_a_file(tmp: Path, mp) -> list[str]:
    (tmp / "file").write_text("a regular file\n")
    return _run("", f"budget.ledger={tmp}/file/ledger.sqlite")(tmp, mp)


def _keys_out_is_a_file(tmp: Path, _mp) -> list[str]:
    (tmp / "keys").write_text("a regular file\n")
    return ["keys", "generate", "--out", str(tmp / "keys")]


def _data_source_missing(tmp: Path, mp) -> list[str]:
    return _run(
        "",
        f"data.source={tmp}/absent.jsonl",
        "reward_model.backbone=tiny",
        "cost_model.backbone=tiny",
    )(tmp, mp)


def _policy_file(data: bytes):
    """A ``certify`` case on a run directory whose ``policy.json`` holds ``data``."""

    def make(tmp: Path, mp) -> list[str]:
        (tmp / "out").mkdir()
        (tmp / "out" / "policy.json").write_bytes(data)
        return _run(command="certify")(tmp, mp)

    return make


# fmt: off
PREFLIGHT_CASES = [
    Case("run-bad-signing-key", _key_file("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"),
         2, "{tmp}/key.pem: not a readable PEM private key"),
    Case("run-signing-key-missing", lambda tmp, mp: _run(f"audit: {{signing_key: {tmp}/absent.pem}}\n")(tmp, mp),
         2, "{tmp}/absent.pem: key file not found"),
    Case("run-signing-key-is-public", _public_key, 2, "this is a public key"),
    Case("run-out-is-a-file", _out_is_a_file("run"), 2, "{tmp}/out: cannot use it as the output directory"),
    Case("train-out-is-a-file", _out_is_a_file("train-reward"), 2, "{tmp}/out: cannot use it as the output directory"),
    Case("run-ledger-under-a-file", _ledger_under_a_file, 2, "{tmp}/file"),
    Case("run-data-source-missing", _data_source_missing, 2, "{tmp}/absent.jsonl: file not found"),
    Case("certify-without-policy", _run(command="certify"), 2, "{tmp}/out: no policy.json in this directory"),
    Case("certify-policy-duplicate-key", _policy_file(b'{"kind": "a", "kind": "b"}'), 2,
         "policy.json: duplicate key 'kind'"),
    Case("certify-policy-deeply-nested", _policy_file(b'{"a":' * 100_000 + b"1" + b"}" * 100_000), 2,
         "policy.json"),
    Case("certify-policy-5000-digit-integer", _policy_file(b'{"a":' + b"9" * 5000 + b"}"), 2, "policy.json"),
    Case("keys-out-is-a-file", _keys_out_is_a_file, 2, "{tmp}/keys: File exists"),
]
# fmt: on


def _ledger_file(data: bytes | None, *, command: str = "show"):
    """A ledger fault at ``{tmp}/ledger.sqlite``: a directory (``data`` None) or these bytes,
    met by ``ledger show`` or by a run's pre-flight."""

    def make(tmp: Path, mp) -> list[str]:
        path = tmp / "ledger.sqlite"
        if data is None:
            path.mkdir()
        else:
            path.write_bytes(data)
        if command == "show":
            return ["ledger", "show", "--ledger", str(path)]
        return _run(command=command)(tmp, mp)

    return make


#: Connections holding a ledger's lock while a row runs (kept open until the module ends).
_HOLDERS: list = []


def _ledger_locked(tmp: Path, mp) -> list[str]:
    """A ledger another process holds an exclusive lock on (busy timeout shortened to 0.2 s)."""
    import sqlite3

    from safealign.privacy.ledger import PrivacyLedger

    path = tmp / "ledger.sqlite"
    PrivacyLedger(path)  # a real, empty ledger
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    _HOLDERS.append(holder)
    mp.setattr(PrivacyLedger.__init__, "__kwdefaults__", {"busy_timeout_s": 0.2})
    return ["ledger", "show", "--ledger", str(path)]


def _report(data: bytes):
    def make(tmp: Path, _mp) -> list[str]:
        (tmp / "report.json").write_bytes(data)
        return ["audit", "verify", str(tmp / "report.json")]

    return make


_SQLITE_HEADER = b"SQLite format 3\0"

# fmt: off
LEDGER_CASES = [
    Case("ledger-is-a-directory", _ledger_file(None), 2, "is a directory, not a ledger file"),
    Case("ledger-corrupt", _ledger_file(_SQLITE_HEADER + b"\xff" * 5000), 2, "not a readable privacy ledger"),
    Case("ledger-garbage", _ledger_file(b"this is not a database" * 300), 2, "not a readable privacy ledger"),
    Case("ledger-empty-header-only", _ledger_file(_SQLITE_HEADER), 2, "not a readable privacy ledger"),
    Case("run-ledger-corrupt", _ledger_file(_SQLITE_HEADER + b"\xff" * 5000, command="run"), 2,
         "not a readable privacy ledger"),
    Case("ledger-locked", _ledger_locked, 2, "{tmp}/ledger.sqlite"),
]

# ``audit verify`` on reports that cannot be processed (forged but well-formed reports are
# tests/audits/test_verify_attacks.py's: they exit 1, not 2).
VERIFY_CASES = [
    Case("verify-deeply-nested", _report(b'{"a":' * 100_000 + b"1" + b"}" * 100_000), 2, "nested too deeply"),
    Case("verify-5000-digit-integer", _report(b'{"a":' + b"9" * 5000 + b"}"), 2, "cannot verify"),
    Case("verify-lone-surrogate", _report(b'{"a":"\\ud800"}'), 2, "cannot verify"),
    Case("verify-not-json", _report(b"report"), 2, "cannot verify"),
    Case("verify-a-list", _report(b"[1,2]"), 2, "cannot verify"),
    Case("verify-missing", lambda tmp, _mp: ["audit", "verify", str(tmp / "absent.json")], 2, "{tmp}/absent.json"),
    Case("verify-a-directory", lambda tmp, _mp: ["audit", "verify", str(tmp)], 2, "cannot read the report"),
]
# fmt: on

ALL_CASES = DATA_CASES + CONFIG_CASES + PREFLIGHT_CASES + LEDGER_CASES + VERIFY_CASES


def _spent(tmp: Path) -> list[str]:
    """What a command spent under ``tmp``: ledger releases and trained models (should be none)."""
    spent = [str(p.relative_to(tmp)) for p in sorted(tmp.glob("out/**/receipt.json"))]
    if (tmp / "ledger.sqlite").is_file():
        from safealign.errors import SafeAlignError
        from safealign.privacy.ledger import PrivacyLedger

        try:
            summaries = PrivacyLedger(tmp / "ledger.sqlite", busy_timeout_s=0.2).summary()
        except SafeAlignError:  # a ledger row's own damaged or locked file: nothing was charged
            summaries = []
        for summary in summaries:
            spent += [f"ledger release {r.label!r} ({r.status})" for r in summary.releases]
    return spent


def _outcome(argv: list[str], capsys) -> tuple[int | str, str]:
    """(exit code, stderr) of ``main(argv)``; an exception escaping main is reported as a crash."""
    try:
        code: int | str = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException as exc:  # noqa: BLE001 - any escape is exactly what this test detects
        code = f"crash: {type(exc).__name__}: {str(exc)[:200]}"
    return code, capsys.readouterr().err


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    if not _OUTCOMES:
        return
    handled = sum(_OUTCOMES.values())
    failed = sorted(k for k, ok in _OUTCOMES.items() if not ok)
    line = f"bad-input matrix: {handled} of {len(_OUTCOMES)} kinds handled"
    if failed:
        line += f" (not handled: {', '.join(failed)})"
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:  # pragma: no cover - pytest without its terminal
        print(line)
        return
    with capture.global_and_fixture_disabled():  # to the terminal, past pytest's capture
        reporter.write_line("\n" + line)


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.kind for c in ALL_CASES])
def test_bad_input_is_handled(case: Case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAFEALIGN_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    argv = case.make(tmp_path, monkeypatch)
    code, err = _outcome(argv, capsys)
    monkeypatch.undo()
    expected = case.message.format(tmp=tmp_path)
    # Found before any stage spent privacy (a ledger release) or trained a model.
    spent = _spent(tmp_path)
    handled = code == case.code and expected in err and "Traceback" not in err and not spent
    _OUTCOMES[case.kind] = handled
    assert code == case.code, f"exit {code!r}, expected {case.code}; stderr: {err[-500:]}"
    assert "Traceback" not in err
    assert expected in err, f"expected {expected!r} on stderr, got: {err[-500:]}"
    assert not spent, f"spent before failing: {spent}"
    # One line per problem, none of them longer than a screen: no dumped input.
    assert len(err) < 4000, err[:300]


def test_the_matrix_covers_every_topic():
    kinds = [c.kind for c in ALL_CASES]
    assert len(kinds) == len(set(kinds)), "two rows share a kind"
    for prefix in ("data-", "config-", "run-", "ledger-", "verify-"):
        assert sum(k.startswith(prefix) for k in kinds) >= 5, prefix
