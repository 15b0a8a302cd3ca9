import json
import subprocess
import sys

from safealign.cli import main


def test_validate_ok_and_bad_line(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    assert main(["data", "validate", str(good)]) == 0
    assert "valid jsonl file, 1 records" in capsys.readouterr().out

    bad = tmp_path / "bad.jsonl"
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"prompt": "r", "rejected": "b"},
    ]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3: field 'chosen' is missing" in err


def test_bad_input_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff\xfe not utf8\n")
    proc = subprocess.run(
        [sys.executable, "-m", "safealign", "data", "validate", str(bad)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{bad}:1: not valid UTF-8" in proc.stderr


def test_usage_error_exits_2(capsys):
    import pytest

    with pytest.raises(SystemExit) as info:
        main(["data", "frobnicate"])
    assert info.value.code == 2


def test_world_export_is_byte_identical_per_seed(tmp_path, capsys):
    small = [
        "data.synthetic.num_users=10",
        "data.synthetic.pairs_per_user=5",
        "data.synthetic.num_prompts=40",
        "data.synthetic.num_candidates=4",
    ]
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert (
            main(["world", "export", "--out", str(tmp_path / name), "--seed", str(seed), *small])
            == 0
        )
    for file in ("pairs.jsonl", "safety_labels.jsonl", "candidates.jsonl", "ground_truth.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
    assert (tmp_path / "a" / "pairs.jsonl").read_bytes() != (
        tmp_path / "c" / "pairs.jsonl"
    ).read_bytes()
    # The exported pairs are valid input for the generic loader.
    assert main(["data", "validate", str(tmp_path / "a" / "pairs.jsonl")]) == 0
    assert "pairs: 50" in capsys.readouterr().out


def test_world_export_rejects_bad_override(tmp_path, capsys):
    assert main(["world", "export", "--out", str(tmp_path), "data.synthetic.num_user=3"]) == 2
    assert "did you mean 'num_users'" in capsys.readouterr().err


def test_keys_generate_and_verify_exit_codes(tmp_path, capsys):
    from safealign.audits.signing import load_private_key
    from tests.audits._real_report import write_real_report

    assert main(["keys", "generate", "--out", str(tmp_path / "keys")]) == 0
    assert (tmp_path / "keys" / "private.pem").stat().st_mode & 0o777 == 0o600
    assert main(["keys", "generate", "--out", str(tmp_path / "keys")]) == 2  # refuses to overwrite
    report = write_real_report(tmp_path / "run", load_private_key(tmp_path / "keys" / "private.pem"))
    capsys.readouterr()
    assert main(["audit", "verify", str(report), "--public-key",
                 str(tmp_path / "keys" / "public.pem")]) == 0
    assert "VALID (signed by the pinned key" in capsys.readouterr().out
    assert main(["audit", "verify", str(report)]) == 3  # intact, but nobody was authenticated
    assert "NOT AUTHENTICATED" in capsys.readouterr().out
    (tmp_path / "run" / "config.resolved.yaml").write_bytes(b"tampered")
    assert main(["audit", "verify", str(report)]) == 1
    assert "config.resolved.yaml" in capsys.readouterr().err


def test_privacy_audit_refuses_the_features_backbone(tmp_path, capsys):
    # Random-word canaries all parse to one feature vector: such an audit could never fail.
    code = main(
        [
            "privacy-audit",
            "examples/synthetic.yaml",
            "--out",
            str(tmp_path / "audit"),
            "reward_model.backbone=features",
            "reward_model.lora=null",
            f"budget.ledger={tmp_path / 'ledger.sqlite'}",
        ]
    )
    assert code == 2
    assert "canaries" in capsys.readouterr().err
    assert not (tmp_path / "ledger.sqlite").exists()
