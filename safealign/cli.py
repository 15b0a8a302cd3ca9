"""The ``safealign`` command line: argument parsing and dispatch only.

Exit codes: 0 success; 1 a check that ran and failed; 2 bad input or usage (a message on stderr,
never a traceback for a user mistake).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from safealign import __version__
from safealign.errors import ConfigError, SafeAlignError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 0, 1, 2
RUN_DIR = "runs/run"  # default run directory of run, align and certify (they share it)


def _data_validate(args: argparse.Namespace) -> int:
    from safealign.data.validate import validate_file

    print(validate_file(args.path, format=args.format).render())
    return EXIT_OK


def _world_export(args: argparse.Namespace) -> int:
    from safealign.config import load_config
    from safealign.data.export import export_world
    from safealign.data.synthetic import SyntheticWorld

    overrides = list(args.overrides) + ([f"seed={args.seed}"] if args.seed is not None else [])
    config = load_config(args.config, overrides)
    world = SyntheticWorld(config.data.synthetic, seed=config.seed)
    paths = export_world(world, args.out, num_candidates=config.data.synthetic.num_candidates)
    stats = world.pairs.statistics()
    print(
        f"synthetic world (seed {config.seed}): {stats['pairs']} pairs, {stats['users']} users, "
        f"{len(world.prompts)} prompts"
    )
    for path in paths:
        print(f"  wrote {path}")
    return EXIT_OK


def _train(kind: str):
    def handler(args: argparse.Namespace) -> int:
        from safealign.config import load_config
        from safealign.pipeline import train_model_stage

        config = load_config(args.config, args.overrides)
        recorded = train_model_stage(config, kind=kind, out_dir=args.out)
        receipt = recorded.result.receipt
        if receipt.private:
            print(
                f"{kind} model trained with DP-SGD: epsilon={receipt.epsilon:.4f} "
                f"(target {receipt.target_epsilon}), delta={receipt.target_delta:g}, "
                f"sigma={receipt.noise_multiplier:.4f}, q={receipt.sample_rate:.4g}, steps={receipt.steps}, "
                f"accountant={receipt.accountant}, unit={receipt.privacy_unit}"
            )
        else:
            print(
                f"{kind} model trained WITHOUT differential privacy (target_epsilon: null): NON-PRIVATE"
            )
        for key, value in sorted(receipt.metrics.items()):
            if isinstance(value, float):
                print(f"  {key}: {value:.4f}")
        print(f"  model:   {Path(args.out) / 'model'}")
        print(f"  receipt: {recorded.receipt_path}")
        if recorded.release_id is not None:
            print(f"  ledger:  {config.budget.ledger} (release #{recorded.release_id})")
        return EXIT_OK

    return handler


def _ledger_show(args: argparse.Namespace) -> int:
    from safealign.privacy.ledger import PrivacyLedger
    from safealign.privacy.ledger_records import format_ledger

    if not Path(args.ledger).exists():
        print(
            f"error: {args.ledger}: no ledger here (it is created by the first private training run)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    print(format_ledger(PrivacyLedger(args.ledger).summary()))
    return EXIT_OK


def _print_run(result) -> None:
    report = result.report
    privacy, safety = report["privacy"], report["safety"]
    print("\n" + "=" * 72)
    if privacy.get("private"):
        print(
            f"privacy   epsilon={privacy['epsilon']:.3f} at delta={privacy['delta']:g} "
            f"(budget epsilon={privacy['budget']['epsilon']:g}; naive sum {privacy['naive_sum_epsilon']:.3f})"
        )
    else:
        print("privacy   NON-PRIVATE: no privacy guarantee")
    if safety["passed"]:
        print(
            f"safety    CERTIFIED: {safety['metric']} upper bound {safety['upper_bound']:.4f} <= "
            f"threshold {safety['threshold']:g} at confidence {safety['confidence']:g} (n={safety['n']})"
        )
    else:
        bound = (
            ""
            if safety.get("upper_bound") is None
            else f" (upper bound {safety['upper_bound']:.4f})"
        )
        print(
            f"safety    NO SOLUTION FOUND: nothing released{bound}; threshold {safety['threshold']:g}"
        )
    groups = (report.get("groups") or {}).get("groups") or {}
    for name, values in groups.items():
        print(
            f"group     {name}: expected reward (model, centred on reference) {values['reward']:+.4f}"
        )
    truth = result.truth
    if truth and "released" in truth:
        released, reference = truth["released"], truth["reference"]
        holds = "holds" if truth.get("guarantee_holds") else "VIOLATED"
        print(
            f"truth     released policy: true E[cost]={released['expected_cost']:+.4f} "
            f"(threshold {truth['cost_threshold']:g}: {holds}), unsafe rate {released['unsafe_rate']:.3f}"
        )
        print(
            f"          reference: E[cost]={reference['expected_cost']:+.4f}; unconstrained tilt: "
            f"E[cost]={truth['unconstrained']['expected_cost']:+.4f}"
        )
        for group, value in released["reward"].items():
            print(
                f"          true reward {group}: released {value:+.4f} vs reference {reference['reward'][group]:+.4f}"
            )
    if result.key_note:
        print(f"note      {result.key_note}")
    for path in result.report_paths:
        print(f"report    {path}")


def _run(args: argparse.Namespace) -> int:
    from safealign.config import load_config
    from safealign.pipeline import run

    result = run(load_config(args.config, args.overrides), args.out)
    _print_run(result)
    return EXIT_OK if result.report["safety"]["passed"] else EXIT_CHECK_FAILED


def _demo(args: argparse.Namespace) -> int:
    from safealign.pipeline import demo_config, run

    result = run(demo_config(seed=args.seed, out_dir=args.out, overrides=args.overrides), args.out)
    _print_run(result)
    return EXIT_OK


def _score(args: argparse.Namespace) -> int:
    import json

    from safealign._atomic import atomic_write_text
    from safealign.data.responses import load_responses
    from safealign.models.scalar import load_scoring_model

    rows = load_responses(args.input)
    model = load_scoring_model(args.model)
    scores = model.score([r["prompt"] for r in rows], [r["response"] for r in rows]).tolist()
    lines = [
        json.dumps({**r, "score": s}, ensure_ascii=False, sort_keys=True) + "\n"
        for r, s in zip(rows, scores, strict=True)
    ]
    atomic_write_text(args.out, "".join(lines))
    print(
        f"scored {len(rows)} responses with the {model.kind} model {args.model}: wrote {args.out}"
    )
    return EXIT_OK


def _certify_samples(args: argparse.Namespace) -> int:
    import json

    from safealign.config import load_config
    from safealign.constraints.hc_rlhf import certify_samples, write_certificate
    from safealign.data.records import LabelledResponse
    from safealign.data.records import fingerprint as records_fingerprint
    from safealign.data.responses import load_responses
    from safealign.errors import DataError
    from safealign.models.scalar import load_scoring_model

    config = load_config(args.config, args.overrides)
    try:
        settings = json.loads(Path(args.sampler_settings).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(
            f"cannot read the sampler settings as JSON ({exc})", path=args.sampler_settings
        ) from None
    if not isinstance(settings, dict) or not settings:
        raise DataError(
            "sampler settings must be a non-empty JSON object (model, temperature, top_p, ...)",
            path=args.sampler_settings,
        )
    rows = load_responses(args.responses)
    model = load_scoring_model(args.cost_model)
    if model.kind != "cost":
        raise DataError(
            f"this is a {model.kind} model; certification needs a cost model", path=args.cost_model
        )
    prompts = [r["prompt"] for r in rows]
    if len(set(prompts)) != len(prompts):
        raise DataError(
            "give exactly one sampled response per safety prompt (a prompt repeats)",
            path=args.responses,
        )
    costs = model.score(prompts, [r["response"] for r in rows])
    safety_fp = records_fingerprint(LabelledResponse(prompt=p) for p in prompts)
    certificate = certify_samples(
        costs, safety=config.safety, sampler_settings=settings, safety_fingerprint=safety_fp
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_certificate(certificate, out / "certificate.json")
    return _print_verdict(certificate.to_dict(), out / "certificate.json")


def _certify(args: argparse.Namespace) -> int:
    byo = {"--sampler-settings": args.sampler_settings, "--cost-model": args.cost_model}
    if args.responses is None:
        given = [name for name, value in byo.items() if value is not None]
        if given:
            raise ConfigError(
                f"{' and '.join(given)}: used only with --responses; without it, certify tests "
                "the policy that `safealign align` wrote to --out"
            )
        return _certify_policy(args)
    missing = [name for name, value in byo.items() if value is None]
    if missing:
        raise ConfigError(f"certify --responses also needs {' and '.join(missing)}")
    args.out = args.out or "runs/certify"
    return _certify_samples(args)


def _certify_policy(args: argparse.Namespace) -> int:
    from safealign.config import load_config
    from safealign.pipeline import certify_policy_stage

    out = Path(args.out or RUN_DIR)
    certificate = certify_policy_stage(load_config(args.config, args.overrides), out)
    return _print_verdict(certificate, out / "certificate.json")


def _print_verdict(certificate: dict, path: Path) -> int:
    if certificate["upper_bound"] is None:  # step 1 selected nothing: NSF without a test
        print(
            "NO SOLUTION FOUND (do not release): no policy met the pessimistic bound when aligning, "
            f"so the safety test was not run; wrote {path}"
        )
        return EXIT_CHECK_FAILED
    verdict = "CERTIFIED" if certificate["passed"] else "NO SOLUTION FOUND (do not release)"
    print(
        f"{verdict}: {certificate['metric']} upper bound {certificate['upper_bound']:.4f} vs "
        f"threshold {certificate['cost_threshold']:g} at confidence {certificate['confidence']:g} "
        f"(n={certificate['n']}); wrote {path}"
    )
    return EXIT_OK if certificate["passed"] else EXIT_CHECK_FAILED


def _align(args: argparse.Namespace) -> int:
    from safealign.config import load_config
    from safealign.pipeline import align_stage

    result = align_stage(
        load_config(args.config, args.overrides), args.out, candidates_path=args.candidates
    )
    s = result.policy_file.selection
    bound = (
        f"pessimistic bound {s['selection_bound']:.4f} (k={s['pessimism_k']:.3f}, "
        f"n_b={s['n_opt']}, n_s={s['n_safety']})"
    )
    if result.policy_file.policy is None:
        print(
            f"NO POLICY meets the pessimistic bound: even the cheapest candidates give {bound} > "
            f"threshold {s['cost_threshold']:g}; wrote {result.policy_path} (policy: null)"
        )
        return EXIT_CHECK_FAILED
    print(
        f"policy selected: lambda={s['lambda']:.4g}, {bound} <= threshold "
        f"{s['cost_threshold']:g}; wrote {result.policy_path}"
    )
    return EXIT_OK


def _keys_generate(args: argparse.Namespace) -> int:
    from safealign.audits.signing import generate_keypair

    private, public = generate_keypair(args.out, overwrite=args.overwrite)
    print(f"wrote {private} (mode 0600: keep it secret) and {public} (give it to reviewers)")
    return EXIT_OK


def _audit_verify(args: argparse.Namespace) -> int:
    from safealign.audits.signing import load_public_key, verify_report

    key = load_public_key(args.public_key) if args.public_key else None
    result = verify_report(args.report, public_key=key)
    if result.valid:
        pinned = (
            "the given public key"
            if result.key_pinned
            else "its embedded key (NOT pinned: pass --public-key)"
        )
        print(
            f"{args.report}: VALID — signature by {pinned} (key id {result.key_id}); "
            f"{result.checked_artifacts} artifact hashes match"
        )
        return EXIT_OK
    print(f"{args.report}: INVALID", file=sys.stderr)
    for problem in result.problems:
        print(f"  - {problem}", file=sys.stderr)
    return EXIT_CHECK_FAILED


def _privacy_audit(args: argparse.Namespace) -> int:
    from safealign.config import load_config
    from safealign.pipeline import privacy_audit_stage

    config = load_config(args.config, args.overrides)
    result = privacy_audit_stage(
        config, out_dir=args.out, num_canaries=args.canaries, noise_off=args.no_noise
    )
    claimed = "none: noise switched off" if result.epsilon is None else f"{result.epsilon:.4f}"
    print(
        f"empirical privacy audit: epsilon_lower={result.epsilon_lower:.4f} (confidence "
        f"{result.confidence:g}) vs accountant epsilon={claimed}; {result.correct}/{result.guesses} "
        f"canary guesses correct out of {result.num_canaries} canaries"
    )
    if result.epsilon is not None and result.epsilon_lower > result.epsilon:
        print("  VIOLATION: the measured lower bound exceeds the claimed epsilon", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print(f"  wrote {Path(args.out) / 'privacy_audit.json'}")
    return EXIT_OK


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safealign",
        description="Align language models from private preference data, certifiably safe and fair.",
    )
    parser.add_argument("--version", action="version", version=f"safealign {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    validate.set_defaults(handler=_data_validate)

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
    export.set_defaults(handler=_world_export)

    demo = commands.add_parser("demo", help="the whole pipeline on the built-in synthetic world")
    demo.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    demo.add_argument(
        "--seed", type=int, default=0, help="seed of the world and every stage (default 0)"
    )
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    demo.set_defaults(handler=_demo)
    _add_config_command(
        commands,
        "run",
        "the whole pipeline: exit 0 certified, 1 no solution found",
        _run,
        RUN_DIR,
    )
    align = _add_config_command(
        commands,
        "align",
        "models, candidates and HC-RLHF step 1: writes OUT/policy.json; exit 1 if no policy "
        "meets the pessimistic bound",
        _align,
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
        _train("reward"),
        "runs/reward-model",
    )
    _add_config_command(
        commands,
        "train-cost",
        "train a cost model (cost > 0 unsafe) with DP-SGD",
        _train("cost"),
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
    audit.set_defaults(handler=_privacy_audit)

    score = commands.add_parser(
        "score", help="score a JSONL of (prompt, response) with a trained model"
    )
    score.add_argument("input", help='JSONL: {"prompt": ..., "response": ...} per line')
    score.add_argument(
        "--model", required=True, help="a model directory written by train-reward/train-cost"
    )
    score.add_argument("--out", required=True, help='output JSONL (input lines plus "score")')
    score.set_defaults(handler=_score)

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
        "--out",
        default=None,
        help=f"the run directory align wrote (default: {RUN_DIR}); with --responses, the "
        "directory for certificate.json (default: runs/certify)",
    )
    certify.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    certify.set_defaults(handler=_certify)

    keys = commands.add_parser("keys", help="Ed25519 signing keys for audit reports")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    generate = keys_commands.add_parser(
        "generate", help="write DIR/private.pem (0600) and DIR/public.pem"
    )
    generate.add_argument("--out", required=True, help="directory for the key pair")
    generate.add_argument("--overwrite", action="store_true", help="replace an existing key pair")
    generate.set_defaults(handler=_keys_generate)

    report = commands.add_parser("audit", help="audit reports")
    report_commands = report.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = report_commands.add_parser(
        "verify", help="exit 0 if the signature and every artifact hash check out"
    )
    verify.add_argument("report", help="report.json")
    verify.add_argument("--public-key", default=None, help="the signer's public.pem (pins the key)")
    verify.set_defaults(handler=_audit_verify)

    ledger = commands.add_parser("ledger", help="the privacy budget ledger")
    ledger_commands = ledger.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    show = ledger_commands.add_parser("show", help="budgets, composed spend and every release")
    show.add_argument("--ledger", default="safealign-ledger.sqlite", help="SQLite ledger path")
    show.set_defaults(handler=_ledger_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``safealign`` console script; returns the exit code."""
    parser = build_parser()
    # key=value overrides may come after options (``CONFIG --out DIR k=v``), which argparse's
    # positional handling cannot express: collect them from the leftovers.
    args, extra = parser.parse_known_args(argv)
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    if len(overrides) != len(extra) or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if overrides:
        args.overrides = list(args.overrides) + overrides
    try:
        return args.handler(args)
    except SafeAlignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
