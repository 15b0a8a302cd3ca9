import json
import subprocess
import sys

import pytest

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
    report = write_real_report(
        tmp_path / "run", load_private_key(tmp_path / "keys" / "private.pem")
    )
    capsys.readouterr()
    assert (
        main(
            ["audit", "verify", str(report), "--public-key", str(tmp_path / "keys" / "public.pem")]
        )
        == 0
    )
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


def _raising(exc: BaseException):
    def handler(args):
        raise exc

    return handler


def test_an_unexpected_exception_is_one_line_with_its_own_exit_code(monkeypatch, capsys, tmp_path):
    from safealign.cli import EXIT_INTERNAL_ERROR

    monkeypatch.delenv("SAFEALIGN_DEBUG", raising=False)
    monkeypatch.setattr(
        "safealign.cli.parser.cmd_data_validate", _raising(RuntimeError("bad\nstate"))
    )
    assert main(["data", "validate", str(tmp_path)]) == EXIT_INTERNAL_ERROR == 70
    err = capsys.readouterr().err
    assert err == (
        "internal error: RuntimeError: bad state (please report; set SAFEALIGN_DEBUG=1 for the "
        "traceback)\n"
    )
    monkeypatch.setenv("SAFEALIGN_DEBUG", "1")
    assert main(["data", "validate", str(tmp_path)]) == 70
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "internal error: RuntimeError" in err


def test_interrupt_and_os_refusals_exit_cleanly(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("safealign.cli.parser.cmd_data_validate", _raising(KeyboardInterrupt()))
    assert main(["data", "validate", str(tmp_path)]) == 130
    assert "interrupted" in capsys.readouterr().err
    refused = PermissionError(13, "Permission denied", str(tmp_path / "f"))
    monkeypatch.setattr("safealign.cli.parser.cmd_data_validate", _raising(refused))
    assert main(["data", "validate", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'f'}: Permission denied\n"


# A config that would run in seconds if nothing stopped it (toy world, feature models).
TOY = [
    "data.synthetic.num_prompts=40",
    "data.synthetic.num_users=10",
    "data.synthetic.pairs_per_user=6",
    "data.synthetic.num_candidates=4",
    "reward_model.backbone=features",
    "reward_model.lora=null",
    "cost_model.backbone=features",
    "cost_model.lora=null",
    "policy.num_candidates=4",
    "groups.mode=none",
]


def _releases(ledger_path):
    from safealign.privacy.ledger import PrivacyLedger

    if not ledger_path.exists():
        return []
    return [r for s in PrivacyLedger(ledger_path).summary() for r in s.releases]


def test_run_with_a_bad_signing_key_spends_nothing(tmp_path, capsys, monkeypatch):
    # Found last, this key cost two charged models and the one-shot safety test (finding 7).
    monkeypatch.setenv("SAFEALIGN_HOME", str(tmp_path / "home"))
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    ledger = tmp_path / "ledger.sqlite"
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "examples/synthetic.yaml",
            "--out",
            str(out),
            *TOY,
            f"budget.ledger={ledger}",
            f"audit.signing_key={key}",
        ]
    )
    assert code == 2
    assert f"{key}: not a readable PEM private key" in capsys.readouterr().err
    assert _releases(ledger) == []
    assert not list(tmp_path.rglob("receipt.json")) and not (out / "certificate.json").exists()


def test_train_with_an_unusable_ledger_path_spends_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAFEALIGN_HOME", str(tmp_path / "home"))
    (tmp_path / "file").write_text("a regular file, not a directory\n")
    ledger = tmp_path / "file" / "ledger.sqlite"
    out = tmp_path / "reward"
    code = main(
        [
            "train-reward",
            "examples/synthetic.yaml",
            "--out",
            str(out),
            *TOY,
            f"budget.ledger={ledger}",
        ]
    )
    assert code == 2
    assert str(tmp_path / "file") in capsys.readouterr().err
    assert not list(tmp_path.rglob("receipt.json"))


def test_preflight_rechecks_a_config_built_in_code(tmp_path):
    import dataclasses

    from safealign.config import load_config
    from safealign.errors import ConfigError
    from safealign.run import preflight

    config = dataclasses.replace(load_config(None, TOY), seed=-1)  # bypasses load-time checks
    with pytest.raises(ConfigError, match=r"seed: must be in \[0, 4294967295\]"):
        preflight(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()
