"""Handlers of the training and pipeline commands: ``demo``, ``run``, ``align``, ``train-reward``,
``train-cost`` and ``privacy-audit``.

Each handler loads the config, opens the run's workspace, calls one verb of :mod:`safealign.run`
and prints what it returned: the privacy receipt, the selected policy or the run's verdict. The
run layer (and with it torch) is imported inside the handlers, never at start-up, so that
``safealign --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safealign.cli.common import EXIT_CHECK_FAILED, EXIT_OK


def cmd_train(kind: str):
    """The handler of ``safealign train-<kind>`` (``kind`` is ``reward`` or ``cost``)."""

    def handler(args: argparse.Namespace) -> int:
        from safealign import load_config
        from safealign.run import Workspace, preflight, train_model
        from safealign.run.paths import MODEL_DIR

        config = load_config(args.config, args.overrides)
        preflight(config, args.out, trains=(kind,))
        recorded = train_model(Workspace(config, args.out), kind)
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
        print(f"  model:   {Path(args.out) / MODEL_DIR}")
        print(f"  receipt: {recorded.receipt_path}")
        if recorded.release_id is not None:
            from safealign.privacy import default_ledger_path

            ledger = config.budget.ledger or default_ledger_path()
            print(f"  ledger:  {ledger} (release #{recorded.release_id})")
        return EXIT_OK

    return handler


#: How the report's group rewards were normalised (``groups.normalize``), in words.
_NORMALIZATION_WORDS = {
    "reference": "centred on reference",
    "regret": "regret vs its constrained optimum",
}


def _group_bounds_text(entry: dict, metric: str) -> str:
    """``"; on the safety prompts: reward >= L, cost <= U (n=N)"`` for a report group entry with
    bounds from the safety test (``cost_upper_bound``, ``reward_lower_bound``, ``safety_test``)."""
    test = entry.get("safety_test")
    if not test:
        return ""
    if entry.get("cost_upper_bound") is None or entry.get("reward_lower_bound") is None:
        return f"; on the safety prompts: no bound ({test.get('reason')})"
    return (
        f"; on the safety prompts: reward >= {entry['reward_lower_bound']:+.4f}, "
        f"{'cost' if metric == 'expected_cost' else 'unsafe rate'} <= "
        f"{entry['cost_upper_bound']:+.4f} (n={test['n']})"
    )


def _print_labelled(safety: dict, truth: dict | None) -> None:
    """With trusted labels: the deciding bound, the other two, and the truth beside them."""
    labelling = (safety or {}).get("labelling") or {}
    bounds = labelling.get("bounds")
    if not bounds:
        return
    names = {"rectified": "label-rectified", "labels_only": "labels-only"}
    print(
        f"labels    {len(labelling['indices'])} of {labelling['n']} responses labelled; decided by "
        f"the {names[labelling['decided_by']]} bound on {safety['quantity']}"
    )
    print(
        f"          label-rectified <= {bounds['rectified']['upper_bound']:.4f} | labels-only <= "
        f"{bounds['labels_only']['upper_bound']:.4f} | cost-model-only (the model's judgement, not "
        f"the truth) <= {bounds['cost_model_only']['upper_bound']:.4f}"
    )
    if truth and "released" in truth:
        key = "expected_cost" if labelling["target"] == "expected_cost" else "unsafe_rate"
        designated = truth.get("designated_set")  # the set's own recorded responses
        value = (designated or truth["released"])[key]
        within = "within" if value <= bounds["rectified"]["upper_bound"] else "OUTSIDE"
        where = " (of the set's recorded responses)" if designated else ""
        print(f"          truth{where}: {key}={value:.4f}, {within} the label-rectified bound")


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
            f"threshold {safety['cost_threshold']:g} at confidence {safety['confidence']:g} (n={safety['n']})"
        )
    else:
        bound = (
            ""
            if safety.get("upper_bound") is None
            else f" (upper bound {safety['upper_bound']:.4f})"
        )
        print(
            f"safety    NO SOLUTION FOUND: nothing released{bound}; threshold {safety['cost_threshold']:g}"
        )
        if safety.get("reason"):  # no test ran: step 1's verdict, with its bound
            print(f"          {safety['reason']}")
    _print_labelled(safety, result.truth)
    groups = (report.get("groups") or {}).get("groups") or {}
    normalization = _NORMALIZATION_WORDS.get(report["config"]["groups"]["normalize"], "normalised")
    for name, values in groups.items():
        print(
            f"group     {name}: reward (model, {normalization}) {values['reward']:+.4f}"
            f"{_group_bounds_text(values, safety['metric'])}"
        )
    truth = result.truth
    if truth and "released" in truth:
        released, reference = truth["released"], truth["reference"]
        holds = "holds" if truth.get("guarantee_holds") else "VIOLATED"
        # The threshold is compared with the true unsafe rate unless the metric is the raw cost.
        key = "expected_cost" if truth.get("metric") == "expected_cost" else "unsafe_rate"
        print(
            f"truth     released policy: true {key}={released[key]:+.4f} "
            f"(threshold {truth['cost_threshold']:g}: {holds}); true E[cost]="
            f"{released['expected_cost']:+.4f}, unsafe rate {released['unsafe_rate']:.3f}"
        )
        unconstrained = truth.get("unconstrained")  # absent for an LM policy
        tilt = (
            ""
            if unconstrained is None
            else f"; unconstrained tilt: {key}={unconstrained[key]:+.4f}"
        )
        print(f"          reference: {key}={reference[key]:+.4f}{tilt}")
        for group, value in released["reward"].items():
            print(
                f"          true reward {group}: released {value:+.4f} vs reference {reference['reward'][group]:+.4f}"
            )
    elif truth and "reference" in truth:  # nothing released: the reference's truth alone
        reference = truth["reference"]
        print(
            f"truth     nothing released; reference: true E[cost]={reference['expected_cost']:+.4f}, "
            f"unsafe rate {reference['unsafe_rate']:.3f}"
        )
    if result.key_note:
        print(f"signing   {result.key_note}")
    for path in result.report_paths:
        print(f"report    {path}")


def cmd_run(args: argparse.Namespace) -> int:
    """``safealign run CONFIG``: the whole pipeline; exit 1 when no solution is found."""
    from safealign import load_config
    from safealign.run import run

    result = run(load_config(args.config, args.overrides), args.out)
    _print_run(result)
    return EXIT_OK if result.report["safety"]["passed"] else EXIT_CHECK_FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    """``safealign demo``: the whole pipeline on the built-in synthetic world."""
    from safealign.run import demo_config, run

    result = run(demo_config(seed=args.seed, out_dir=args.out, overrides=args.overrides), args.out)
    _print_run(result)
    return EXIT_OK


def cmd_align(args: argparse.Namespace) -> int:
    """``safealign align CONFIG``: HC-RLHF step 1; exit 1 if no policy meets the bound."""
    from safealign import load_config
    from safealign.run import Workspace, align

    config = load_config(args.config, args.overrides)
    result = align(Workspace(config, args.out), candidates_path=args.candidates)
    s = result.policy_file.selection
    bound = (
        f"pessimistic bound {s['selection_bound']:.4f} (k={s['pessimism_k']:.3f}, "
        f"n_opt={s['n_opt']}, n_safety={s['n_safety']})"
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


def cmd_privacy_audit(args: argparse.Namespace) -> int:
    """``safealign privacy-audit CONFIG``: exit 1 if the measured epsilon exceeds the claim."""
    from safealign import load_config
    from safealign.run import Workspace, audit_privacy, preflight

    config = load_config(args.config, args.overrides)
    preflight(config, args.out, trains=("reward",))
    result = audit_privacy(
        Workspace(config, args.out), num_canaries=args.canaries, noise_off=args.no_noise
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
    from safealign.run import RunPaths

    print(f"  wrote {RunPaths(Path(args.out)).privacy_audit}")
    return EXIT_OK
