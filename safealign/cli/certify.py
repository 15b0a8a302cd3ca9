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
    from safealign.config import load_config
    from safealign.constraints.attempts import attempt_safety, logged_test
    from safealign.constraints.hc_rlhf import certify_samples
    from safealign.data.io import parse_json
    from safealign.data.records import LabelledResponse, normalise_text
    from safealign.data.records import fingerprint as records_fingerprint
    from safealign.data.responses import load_responses
    from safealign.errors import DataError
    from safealign.models.scalar import load_scoring_model

    config = load_config(args.config, args.overrides)
    try:
        text = Path(args.sampler_settings).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(
            f"cannot read the sampler settings ({exc})", path=args.sampler_settings
        ) from None
    settings = parse_json(text, path=args.sampler_settings)  # strict: see safealign.data.io
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
    if len({normalise_text(p) for p in prompts}) != len(prompts):
        raise DataError(
            "give exactly one sampled response per safety prompt (a prompt repeats, up to case, "
            "spacing, zero-width characters and edge punctuation)",
            path=args.responses,
        )
    out = Path(args.out)
    checked = _refuse_aligned_prompts(args, config, prompts, out)
    costs = model.score(prompts, [r["response"] for r in rows])
    safety_fp = records_fingerprint(LabelledResponse(prompt=p) for p in prompts)

    def test() -> dict:
        certificate = certify_samples(
            costs,
            safety=attempt_safety(config.safety),
            sampler_settings=settings,
            safety_fingerprint=safety_fp,
        ).to_dict()
        if checked is None:
            certificate["assumptions"].append(
                "no policy.json was given (--policy, or one in --out): the prompts were not "
                "checked against the prompts the policy was aligned on"
            )
        return certificate

    out.mkdir(parents=True, exist_ok=True)
    path = out / "certificate.json"
    certificate = logged_test(config.budget, config.safety, prompts, settings, path, test)
    return _print_verdict(certificate, path)


def _refuse_aligned_prompts(args, config, prompts: list[str], out: Path) -> Path | None:
    """Refuse responses to prompts the policy was aligned on (normalised copies or near-copies):
    the one-shot test is valid only on prompts that selection never saw. Returns the policy.json
    checked against, or None when there is none (--policy, or OUT/policy.json)."""
    from safealign.constraints.policy_file import POLICY_FILE, aligned_prompts, load_policy_file
    from safealign.data.io import iter_json_lines
    from safealign.data.near_duplicates import NearDuplicateIndex
    from safealign.errors import DataError

    path = Path(args.policy) if args.policy else out / POLICY_FILE
    if args.policy is None and not path.is_file():
        return None
    policy_file = load_policy_file(path)
    index = NearDuplicateIndex(
        aligned_prompts(policy_file, path, lambda: _candidate_split(config, policy_file, path))
    )
    lines = [n for n, _ in iter_json_lines(args.responses)]
    for line, prompt in zip(lines, prompts, strict=True):
        if index.match(prompt) is not None:
            raise DataError(
                f"this prompt is one the policy was aligned on ({path}), or a near-copy of one "
                "(same normalised text, or Jaccard >= 0.8 on word 3-shingles): the safety test is "
                "valid only on prompts the policy was never optimised on; sample responses for "
                "fresh safety prompts",
                path=args.responses,
                line=line,
                field="prompt",
            )
    return path


def _candidate_split(config, policy_file, path: Path):
    """The candidate split the policy was aligned on: the config's data, checked by commitment."""
    from safealign.data.source import load_source, make_splits
    from safealign.errors import DataError
    from safealign.run_stages import data_record

    pairs, _ = load_source(config)
    splits = make_splits(pairs, config)
    recorded = policy_file.data.get("dataset_fingerprint")
    if data_record(config, pairs, splits)["dataset_fingerprint"] != recorded:
        raise DataError(
            "the policy was aligned on other data than this config's (the dataset commitments "
            "differ), so its candidate prompts cannot be checked: certify with the config and "
            "budget.ledger that align used",
            path=str(path),
            field="data",
        )
    return splits.candidate.prompts


def cmd_certify(args: argparse.Namespace) -> int:
    """``safealign certify CONFIG``: test the aligned policy, or given responses; exit 1: NSF."""
    byo = {
        "--sampler-settings": args.sampler_settings,
        "--cost-model": args.cost_model,
        "--policy": args.policy,
    }
    if args.responses is None:
        given = [name for name, value in byo.items() if value is not None]
        if given:
            raise ConfigError(
                f"{' and '.join(given)}: used only with --responses; without it, certify tests "
                "the policy that `safealign align` wrote to --out"
            )
        return _certify_policy(args)
    missing = [name for name in list(byo)[:2] if byo[name] is None]
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
