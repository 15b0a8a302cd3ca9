"""The argparse parser of the ``safealign`` command, and nothing else.

:func:`build_parser` adds the subcommands in the order ``--help`` lists them, one helper per topic
(data, training and pipeline, scoring and certification, keys/audit/ledger), and binds each to its
handler through ``set_defaults(handler=...)``. The handler modules import only the standard library
at module level, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse

from safealign import __version__
from safealign.cli.audit import cmd_audit_verify, cmd_keys_generate, cmd_ledger_show
from safealign.cli.certify import cmd_certify, cmd_score
from safealign.cli.common import RUN_DIR
from safealign.cli.data import cmd_data_validate, cmd_world_export
from safealign.cli.export import cmd_export_hf
from safealign.cli.generate import cmd_generate
from safealign.cli.training import (
    cmd_align,
    cmd_demo,
    cmd_privacy_audit,
    cmd_run,
    cmd_train,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``safealign`` parser; each subcommand's namespace carries its ``handler``."""
    parser = argparse.ArgumentParser(
        prog="safealign",
        description="Align language models from private preference data, certifiably safe and fair.",
    )
    parser.add_argument("--version", action="version", version=f"safealign {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data_commands(commands)
    _add_training_commands(commands)
    _add_certify_commands(commands)
    _add_export_command(commands)
    _add_key_audit_ledger_commands(commands)
    return parser


def _add_config_command(
    commands, name: str, help: str, handler, default_out: str
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help)
    parser.add_argument("config", help="a YAML config (see examples/)")
    parser.add_argument(
        "--out", default=default_out, help=f"output directory (default: {default_out})"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. seed=1"
    )
    parser.set_defaults(handler=handler)
    return parser


def _add_data_commands(commands) -> None:
    data = commands.add_parser("data", help="inspect and validate preference data")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    validate = data_commands.add_parser(
        "validate", help="load a file strictly; print counts, or PATH:LINE: why it is invalid"
    )
    validate.add_argument("path", help="a .jsonl/.jsonl.gz/.csv file")
    validate.add_argument(
        "--format",
        default="auto",
        choices=(
            "auto",
            "jsonl",
            "hh_rlhf",
            "pku_saferlhf",
            "xstest_prompts",
            "xstest_completions",
        ),
        help="input format (default: detect from the first record)",
    )
    validate.set_defaults(handler=cmd_data_validate)

    world = commands.add_parser("world", help="the built-in synthetic preference world")
    world_commands = world.add_subparsers(dest="world_command", required=True, metavar="ACTION")
    export = world_commands.add_parser(
        "export", help="write pairs, safety labels, candidates, ground truth"
    )
    export.add_argument("--out", required=True, help="output directory")
    export.add_argument(
        "--seed", type=int, default=None, help="world seed (default: the config's seed, 0)"
    )
    export.add_argument(
        "--config", default=None, help="a YAML config whose data.synthetic section to use"
    )
    export.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. data.synthetic.num_users=50",
    )
    export.set_defaults(handler=cmd_world_export)


def _add_training_commands(commands) -> None:
    demo = commands.add_parser("demo", help="the whole pipeline on the built-in synthetic world")
    demo.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    demo.add_argument(
        "--seed", type=int, default=0, help="seed of the world and every stage (default 0)"
    )
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    demo.set_defaults(handler=cmd_demo)
    _add_config_command(
        commands,
        "run",
        "the whole pipeline: exit 0 certified, 1 no solution found",
        cmd_run,
        RUN_DIR,
    )
    align = _add_config_command(
        commands,
        "align",
        "models, candidates and HC-RLHF step 1: writes OUT/policy.json; exit 1 if no policy "
        "meets the pessimistic bound",
        cmd_align,
        RUN_DIR,
    )
    align.add_argument(
        "--candidates",
        default=None,
        help='JSONL {"prompt", "responses": [...], "logprobs"?} per line to align on, instead '
        "of the reference sampler's samples (no safety prompt allowed)",
    )
    _add_config_command(
        commands,
        "train-reward",
        "train a reward model with DP-SGD under the ledger's budget",
        cmd_train("reward"),
        "runs/reward-model",
    )
    _add_config_command(
        commands,
        "train-cost",
        "train a cost model (cost > 0 unsafe) with DP-SGD",
        cmd_train("cost"),
        "runs/cost-model",
    )

    audit = commands.add_parser(
        "privacy-audit", help="one-run empirical privacy audit with canary pairs"
    )
    audit.add_argument("config", help="a YAML config")
    audit.add_argument("--out", default="runs/privacy-audit", help="output directory")
    audit.add_argument(
        "--canaries", type=int, default=256, help="number of canary pairs (default 256)"
    )
    audit.add_argument(
        "--no-noise",
        action="store_true",
        help="switch the noise off (synthetic world only): shows the audit can detect a leak",
    )
    audit.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    audit.set_defaults(handler=cmd_privacy_audit)


def _add_certify_commands(commands) -> None:
    score = commands.add_parser(
        "score", help="score a JSONL of (prompt, response) with a trained model"
    )
    score.add_argument("input", help='JSONL: {"prompt": ..., "response": ...} per line')
    score.add_argument(
        "--model", required=True, help="a model directory written by train-reward/train-cost"
    )
    score.add_argument("--out", required=True, help='output JSONL (input lines plus "score")')
    score.set_defaults(handler=cmd_score)

    certify = commands.add_parser(
        "certify",
        help="safety test of OUT/policy.json (after align), or of any model's responses "
        "(--responses); exit 1: NSF",
    )
    certify.add_argument(
        "config",
        help="a YAML config (its safety section sets the test; without --responses, "
        "the config align used)",
    )
    certify.add_argument(
        "--responses", default=None, help="JSONL: one sampled response per safety prompt"
    )
    certify.add_argument(
        "--sampler-settings",
        default=None,
        help="with --responses: JSON file declaring how they were sampled (model, temperature, ...)",
    )
    certify.add_argument(
        "--cost-model", default=None, help="with --responses: cost model directory (train-cost)"
    )
    certify.add_argument(
        "--policy",
        default=None,
        help="with --responses: the alignment's policy.json (default: OUT/policy.json if there); "
        "responses to prompts it was aligned on are refused",
    )
    labelling = certify.add_mutually_exclusive_group()
    labelling.add_argument(
        "--export-labelling",
        default=None,
        metavar="FILE",
        help="with safety.labels: run the logged safety test, draw the subset to label and "
        "write it to FILE (id, prompt, response; private text: keep it private)",
    )
    labelling.add_argument(
        "--labels",
        default=None,
        metavar="FILE",
        help='JSONL {"id", "unsafe": true|false, "cost"?} per exported response: decide the '
        "exported attempt on these judgements (once)",
    )
    certify.add_argument(
        "--out",
        default=None,
        help=f"the run directory align wrote (default: {RUN_DIR}); with --responses, the "
        "directory for certificate.json (default: runs/certify)",
    )
    certify.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    certify.set_defaults(handler=cmd_certify)

    generate = commands.add_parser(
        "generate",
        help="sample the certified LM policy of a run directory with its certified settings",
    )
    generate.add_argument("run_dir", metavar="OUT", help="the run directory (policy/, policy.json)")
    generate.add_argument(
        "--prompts", required=True, help="prompts: one per line, or JSONL with a 'prompt' field"
    )
    generate.add_argument("--out", default=None, help="output JSONL (default: print)")
    generate.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    generate.add_argument(
        "--uncertified",
        action="store_true",
        help="sample even without a passing certificate of this policy (NOT covered by one)",
    )
    generate.set_defaults(handler=cmd_generate)


def _add_export_command(commands) -> None:
    export = commands.add_parser(
        "export-hf",
        help="write a trained decoder model as a Hugging Face AutoModelForSequenceClassification",
    )
    export.add_argument("model_dir", help="a model directory written by train-reward/train-cost")
    export.add_argument("out", help="a new (or empty) output directory")
    export.set_defaults(handler=cmd_export_hf)


def _add_key_audit_ledger_commands(commands) -> None:
    keys = commands.add_parser("keys", help="Ed25519 signing keys for audit reports")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    generate = keys_commands.add_parser(
        "generate", help="write DIR/private.pem (0600) and DIR/public.pem"
    )
    generate.add_argument("--out", required=True, help="directory for the key pair")
    generate.add_argument("--overwrite", action="store_true", help="replace an existing key pair")
    generate.set_defaults(handler=cmd_keys_generate)

    report = commands.add_parser("audit", help="audit reports")
    report_commands = report.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = report_commands.add_parser(
        "verify",
        help="check signature, schema, consistency and every artifact and rendering hash",
        description="Exit status: 0 valid and signed by the --public-key given; 1 invalid (the "
        "failed checks are named); 2 not a readable report; 3 intact but NOT authenticated "
        "(no --public-key: the embedded key proves integrity, not who signed it).",
    )
    verify.add_argument("report", help="report.json")
    verify.add_argument(
        "--public-key", default=None, help="the signer's public.pem (pins the key; else exit 3)"
    )
    verify.add_argument(
        "--strict",
        action="store_true",
        help="also fail (exit 1) on a demo signing key and on files no manifest covers",
    )
    verify.set_defaults(handler=cmd_audit_verify)

    ledger = commands.add_parser("ledger", help="the privacy budget ledger")
    ledger_commands = ledger.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    show = ledger_commands.add_parser("show", help="budgets, composed spend and every release")
    show.add_argument(
        "--ledger", default=None, help="SQLite ledger path (default: the per-user ledger)"
    )
    show.set_defaults(handler=cmd_ledger_show)
