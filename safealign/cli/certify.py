"""Handlers of the scoring and certification commands: ``score`` and ``certify``.

``certify`` has two modes. Without ``--responses`` it runs the HC-RLHF safety test (step 2) on the
``policy.json`` that ``align`` wrote; with ``--responses``, ``--sampler-settings`` and
``--cost-model`` it certifies any model's sampled responses, scored by a trained cost model. Both
print the same verdict and exit 1 on NO SOLUTION FOUND. Heavy imports stay inside the handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safealign.cli.common import EXIT_CHECK_FAILED, EXIT_OK, RUN_DIR
from safealign.errors import ConfigError


def cmd_score(args: argparse.Namespace) -> int:
    """``safealign score INPUT --model DIR --out FILE``: add a ``score`` to each JSONL line."""
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


def cmd_certify(args: argparse.Namespace) -> int:
    """``safealign certify CONFIG``: test the aligned policy, or given responses; exit 1: NSF."""
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
    _print_group_bounds(certificate.get("groups"))
    return EXIT_OK if certificate["passed"] else EXIT_CHECK_FAILED


def _print_group_bounds(groups: dict | None) -> None:
    """Each group's bounds from the same sample (each at the certificate's confidence alone)."""
    if not groups:
        return
    for name, entry in groups["groups"].items():
        if entry["cost_upper_bound"] is None:
            print(f"  group {name}: no bound ({entry['reason']})")
            continue
        print(
            f"  group {name}: reward ({groups['reward_normalization']}) >= "
            f"{entry['reward_lower_bound']:+.4f}, {groups['metric']} <= "
            f"{entry['cost_upper_bound']:+.4f} (n={entry['n']}, prompts: {entry['prompts']})"
        )
    print("  (each group's bound holds at the stated confidence on its own, not simultaneously)")
