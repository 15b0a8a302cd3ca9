"""Handlers of the scoring and certification commands: ``score`` and ``certify``.

``certify`` has two modes. Without ``--responses`` it runs the HC-RLHF safety test (step 2) on the
``policy.json`` that ``align`` wrote (:func:`safealign.run.certify`); with ``--responses``,
``--sampler-settings`` and ``--cost-model`` it certifies any model's sampled responses, scored by a
trained cost model (:func:`safealign.run.responses.certify_responses`). Both print the same
verdict and exit 1 on NO SOLUTION FOUND. Heavy imports stay inside the handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safealign import ConfigError
from safealign.cli.common import EXIT_CHECK_FAILED, EXIT_OK, RUN_DIR


def cmd_score(args: argparse.Namespace) -> int:
    """``safealign score INPUT --model DIR --out FILE``: add a ``score`` to each JSONL line."""
    import json

    from safealign._atomic import atomic_write_text
    from safealign.data import load_responses
    from safealign.models import load_scoring_model

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
    from safealign import load_config
    from safealign.run import Workspace
    from safealign.run.responses import certify_responses

    ws = Workspace(load_config(args.config, args.overrides), args.out)
    certificate = certify_responses(
        ws,
        responses=args.responses,
        sampler_settings=args.sampler_settings,
        cost_model=args.cost_model,
        policy=args.policy,
    )
    return _print_verdict(certificate, ws.paths.certificate)


def cmd_certify(args: argparse.Namespace) -> int:
    """``safealign certify CONFIG``: test the aligned policy, or given responses; exit 1: NSF."""
    byo = {
        "--sampler-settings": args.sampler_settings,
        "--cost-model": args.cost_model,
        "--policy": args.policy,
    }
    labelled = args.export_labelling is not None or args.labels is not None
    if labelled and args.responses is not None:
        raise ConfigError(
            "--export-labelling and --labels certify the policy that `safealign align` wrote, "
            "not --responses"
        )
    if labelled:
        return _certify_labelled(args)
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
    from safealign import load_config
    from safealign.run import Workspace, certify

    ws = Workspace(load_config(args.config, args.overrides), args.out or RUN_DIR)
    return _print_labelled_verdict(certify(ws), ws.paths.certificate)


def _certify_labelled(args: argparse.Namespace) -> int:
    from safealign import load_config
    from safealign.run import Workspace
    from safealign.run.labelling import AWAITING, certify_with_labels, export_labelling

    ws = Workspace(load_config(args.config, args.overrides), args.out or RUN_DIR)
    if args.labels is not None:
        return _print_labelled_verdict(certify_with_labels(ws, args.labels), ws.paths.certificate)
    certificate = export_labelling(ws, args.export_labelling)
    section = certificate.labelling
    if section is None or section["status"] != AWAITING:
        print(f"this attempt is already decided; see {ws.paths.certificate}")
        return _print_labelled_verdict(certificate, ws.paths.certificate)
    config_arg = " ".join([args.config or "CONFIG", *args.overrides])
    print(
        f"AWAITING LABELS (not released): the safety test sampled and scored {section['n']} "
        f"responses (one logged attempt); {len(section['indices'])} of them, drawn at random, "
        f'are in {args.export_labelling}. Next: add "unsafe": true|false'
        f"{' and a cost' if section['target'] == 'expected_cost' else ''} to each line (keep the "
        "file private: it holds the responses), then run: safealign certify "
        f"{config_arg} --out {ws.out} --labels LABELS.jsonl"
    )
    return EXIT_OK


def _print_labelled_verdict(certificate, path: Path) -> int:
    """The deciding bound's verdict, with the three bounds named (exit 1 on NSF)."""
    section = certificate.labelling
    if section is None or "bounds" not in section:
        return _print_verdict(certificate, path)
    verdict = "CERTIFIED" if certificate.passed else "NO SOLUTION FOUND (do not release)"
    print(
        f"{verdict}: decided by the {section['decided_by']} bound on {certificate.quantity}: "
        f"{certificate.upper_bound:.4f} vs threshold {certificate.cost_threshold:g} at "
        f"confidence {certificate.confidence:g} ({len(section['indices'])} labels, "
        f"{section['n']} scored responses); wrote {path}"
    )
    for name, entry in section["bounds"].items():
        mark = "  <- decides" if name == section["decided_by"] else ""
        print(f"  {name}: {entry['upper_bound']:.4f} ({entry['quantity']}){mark}")
    return EXIT_OK if certificate.passed else EXIT_CHECK_FAILED


def _print_verdict(certificate, path: Path) -> int:
    """Print a :class:`~safealign.constraints.hc_rlhf.Certificate`'s verdict; exit 1 on NSF."""
    if not certificate.tested:  # step 1 selected nothing: NSF without a test
        print(
            "NO SOLUTION FOUND (do not release): no policy met the pessimistic bound when aligning, "
            f"so the safety test was not run; wrote {path}"
        )
        return EXIT_CHECK_FAILED
    verdict = "CERTIFIED" if certificate.passed else "NO SOLUTION FOUND (do not release)"
    print(
        f"{verdict}: {certificate.metric} upper bound {certificate.upper_bound:.4f} vs "
        f"threshold {certificate.cost_threshold:g} at confidence {certificate.confidence:g} "
        f"(n={certificate.n}); wrote {path}"
    )
    _print_group_bounds(certificate.groups)
    return EXIT_OK if certificate.passed else EXIT_CHECK_FAILED


def _print_group_bounds(groups: dict | None) -> None:
    """Each group's bounds from the same sample, and the coverage they hold with."""
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
    # The block's own coverage statement (simultaneous by default, per group if declared).
    print(f"  ({groups.get('note') or 'each group bound at the stated confidence on its own'})")
