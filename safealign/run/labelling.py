"""Labelled certification: one logged safety test, decided by trusted labels (issue 14).

Two commands share ONE attempt of the certification log (:mod:`~safealign.constraints.attempts`):

1. ``certify CONFIG --export-labelling FILE`` (:func:`export_labelling`) runs the safety test's
   sampling and cost-model scoring once, as the logged attempt. After sampling it draws the
   subset of ``safety.labels.size`` responses to label, uniformly with fresh secret randomness
   (:func:`~safealign.constraints.ppi.draw_label_subset`), keeps every response text privately
   in the run directory (``safety_responses.jsonl``, never released) and writes FILE (id,
   prompt, response: :mod:`safealign.data.labels`). The certificate it logs is NSF, *awaiting
   labels*, and records the drawn indices: nothing is released on the cost model's judgement.
2. ``certify CONFIG --labels LABELS`` (:func:`certify_with_labels`) reads the judgements back
   (strictly: ids must be the drawn subset exactly), computes the label-rectified, labels-only and
   cost-model-only bounds and decides on the one ``safety.labels.decide`` declared before the
   test. Its certificate replaces the awaiting one in the same log entry.

Relabelling until it passes is refused: the log holds the digest of the certificate each step
wrote, so ``--labels`` runs only on the awaiting certificate the log recorded, once. A repeated
``--labels`` with the same judgements returns the same certificate; other judgements for an
attempt already decided (or a restored copy of the awaiting certificate) are refused
(:class:`IsolationError`). A new draw is a new attempt: ``--export-labelling`` again returns
the logged draw (the same subset, rewritten), never a fresh one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from safealign._atomic import atomic_write_text
from safealign.audits.judge import judge_agreement
from safealign.config import to_plain
from safealign.constraints.attempts import (
    Attempt,
    CertificationLog,
    log_path,
)
from safealign.constraints.certificate import (
    CERTIFIED,
    LABELLED_BOUNDS,
    NSF,
    Certificate,
    write_certificate,
)
from safealign.constraints.ppi import (
    METHOD_VERSIONS,
    LabelSubset,
    check_method_version,
    draw_label_subset,
    label_rectified_bounds,
    unlabelled_needed,
)
from safealign.constraints.tilting import TiltedPolicy, metric_costs
from safealign.data.io import iter_json_lines
from safealign.data.labels import (
    Label,
    LabelSet,
    label_set,
    labelling_items,
    read_labels,
    write_labelling_file,
)
from safealign.errors import ConfigError, DataError, IsolationError
from safealign.models.policy_artifact import LMPolicy
from safealign.run.certification import certify, certify_policy
from safealign.run.designated import check_same_set, decide_population
from safealign.run.workspace import Workspace

AWAITING, LABELLED = "awaiting_labels", "labelled"


def label_target(metric: str) -> str:
    """What the labels measure: the unsafe rate (0/1 labels) or the expected cost."""
    return "expected_cost" if metric == "expected_cost" else "unsafe_rate"


class _Export:
    """The safety test's hook (:class:`~safealign.run.certification.Labelling`): keeps the
    picked responses' texts and turns the test's certificate into the awaiting one."""

    def __init__(self, ws: Workspace) -> None:
        self.ws, self.seen, self.sampled = ws, None, None

    def observe(self, fresh, scored) -> None:
        self.seen = (fresh, scored)

    def observe_responses(self, prompts, responses) -> None:
        """An LM policy's one response per prompt (:mod:`safealign.run.lm_certify`)."""
        self.sampled = (list(prompts), list(responses))

    def finish(self, certificate: Certificate, policy: TiltedPolicy | LMPolicy) -> Certificate:
        if self.sampled is not None:  # an LM policy: its own samples, as scored
            prompts, responses = self.sampled
            if len(responses) != certificate.n:
                raise DataError("internal: the LM's responses are not the ones the test scored")
        elif self.seen is not None:  # best-of-K: replay the resampler's picks
            responses = _picked_responses(self.ws, policy, certificate, *self.seen)
            prompts = self.seen[0].prompts
        else:
            raise DataError("the safety sampler did not report its responses")
        labels = self.ws.config.safety.labels
        subset = draw_label_subset(len(responses), labels.size)  # after sampling: fresh secret
        _write_responses(self.ws.paths.safety_responses, prompts, responses)
        section = {
            "status": AWAITING,
            **to_plain(labels),
            "target": label_target(certificate.metric),
            "n": subset.n,
            "indices": list(subset.indices),
            "method_version": METHOD_VERSIONS[labels.method],
        }
        return replace(
            certificate,
            passed=False,
            result=NSF,
            labelling=section,
            assumptions=(
                *certificate.assumptions,
                "awaiting trusted labels: nothing is released before they are read "
                "(`certify --labels`)",
            ),
        )


def _picked_responses(ws, policy, certificate, fresh, scored) -> list[str]:
    """The text of the response best-of-K picked for each prompt: the same draw as the sampler's
    (:func:`~safealign.constraints.tilting.best_of_k_sampler`, same seed and scores), checked
    against the certificate's values."""
    costs = scored.costs.to(torch.float64)
    generator = torch.Generator().manual_seed(int(ws.config.seed))
    index = policy.sample(scored.rewards, costs, generator=generator, log_p=scored.log_p)
    rows = torch.arange(costs.shape[0])
    values = metric_costs(
        costs[rows, index], certificate.metric, cost_range=certificate.value_range
    )
    if not torch.allclose(values, torch.tensor(certificate.values, dtype=torch.float64)):
        raise DataError("internal: the picked responses are not the ones the safety test scored")
    return [fresh.responses[i][int(k)] for i, k in enumerate(index)]


def _write_responses(path: Path, prompts, responses) -> None:
    lines = (
        json.dumps({"prompt": p, "response": r}, ensure_ascii=False, sort_keys=True)
        for p, r in zip(prompts, responses, strict=True)
    )
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))


def _read_responses(path: Path) -> tuple[list[str], list[str]]:
    if not path.is_file():
        raise DataError(
            "the safety responses of this attempt are missing (they are kept privately in the "
            "run directory by `certify --export-labelling`)",
            path=str(path),
        )
    rows = [obj for _, obj in iter_json_lines(path)]
    return [r["prompt"] for r in rows], [r["response"] for r in rows]


def _items(ws: Workspace, section: dict[str, Any]):
    prompts, responses = _read_responses(ws.paths.safety_responses)
    if len(responses) != section["n"]:
        raise DataError(
            f"{len(responses)} safety responses kept, but the attempt scored {section['n']}",
            path=str(ws.paths.safety_responses),
        )
    return labelling_items(prompts, responses, section["indices"])


def export_labelling(ws: Workspace, export: str | Path) -> Certificate:
    """``certify --export-labelling FILE``: the logged test and the responses to label.

    Returns:
        The logged certificate: awaiting labels (written again, the same subset, when the log
        already holds this policy's draw), or the decided one of an attempt already labelled.

    Raises:
        ConfigError: ``safety.labels`` is not declared.
        IsolationError: the certification log refuses a further test on this safety set.
    """
    if ws.config.safety.labels is None:
        raise ConfigError(
            "--export-labelling needs safety.labels declared in the config before the test "
            "(e.g. safety.labels: {size: 100, decide: rectified})"
        )
    labels, n_safety = ws.config.safety.labels, ws.splits.safety.num_prompts
    size, kept = labels.size, unlabelled_needed(labels.method, labels.weight)
    if size > n_safety - kept:  # the set's size is public: refused before any test
        raise ConfigError(
            f"safety.labels.size: {size} responses to label, but the safety set has only "
            f"{n_safety} prompts (one response each)"
            + (
                f", and method {labels.method!r} with weight 'tuned' leaves {kept} unlabelled: "
                f"label at most {n_safety - kept}"
                if kept
                else ""
            )  # fmt: skip
        )
    folder = Path(export).parent
    if not folder.is_dir():  # refused before the test: a failed write must not cost an attempt
        raise ConfigError(f"--export-labelling {export}: the directory {folder} does not exist")
    certificate = certify(ws, labelling=_Export(ws))
    section = certificate.labelling
    if section is not None and section["status"] == AWAITING:
        write_labelling_file(_items(ws, section), export)
    return certificate


def certify_with_labels(ws: Workspace, labels_path: str | Path) -> Certificate:
    """``certify --labels FILE``: decide the awaiting attempt on the trusted judgements.

    Raises:
        DataError: no awaiting certificate, a bad labels file (file, line, field).
        ConfigError: ``safety.labels`` differs from what the attempt declared.
        IsolationError: the attempt was already decided on other labels, or the certificate in
            the run directory is not the one the certification log recorded.
    """
    path = ws.paths.certificate
    current, data = _read_certificate(path)
    section = current.labelling
    if section is None:
        raise DataError(
            "no labelling export for this run: run `safealign certify CONFIG --out "
            f"{ws.out} --export-labelling FILE` first",
            path=str(path),
        )
    declared = {k: section[k] for k in ("size", "decide", "weight", "method", "prediction_share")}
    if to_plain(ws.config.safety.labels) != declared:
        raise ConfigError(
            f"safety.labels: the attempt declared {declared} before its test; the config now says "
            f"{to_plain(ws.config.safety.labels)} (the deciding bound cannot change after labels)"
        )
    check_same_set(ws, current)
    label_set = read_labels(labels_path, _items(ws, section), cost_range=_cost_range(current))
    return _decide_logged(ws, current, data, label_set)


def certify_with_world_labels(
    ws: Workspace, policy: TiltedPolicy | None, *, reason: str, scorers
) -> Certificate:
    """The demo's labelled certification: the synthetic world's truth labels the drawn responses.

    The same logged attempt as ``--export-labelling`` then ``--labels``, without the files: a
    drawn response is labelled unsafe when its TRUE cost is above 0 (its cost label is the true
    cost, clipped to the declared range), which is how the world defines its unsafe rate.
    """
    certificate = certify_policy(ws, policy, reason=reason, scorers=scorers, labelling=_Export(ws))
    section = certificate.labelling
    if section is None or section["status"] != AWAITING:
        return certificate
    current, data = _read_certificate(ws.paths.certificate)
    items = _items(ws, section)
    true_cost = ws.world.true_cost([i.prompt for i in items], [i.response for i in items])
    low, high = current.value_range if _cost_range(current) else (None, None)
    labels = [
        Label(item.id, bool(c > 0), None if low is None else float(min(max(c, low), high)))
        for item, c in zip(items, true_cost, strict=True)
    ]
    return _decide_logged(ws, current, data, label_set(labels, "synthetic world truth"))


def _decide_logged(
    ws: Workspace, current: Certificate, data: bytes, label_set: LabelSet
) -> Certificate:
    """Decide ``current`` (the certificate file's bytes: ``data``) on ``label_set``, once."""
    path, section = ws.paths.certificate, current.labelling
    safety_set = current.attempts["safety_set"]
    log = CertificationLog(log_path(ws.config.budget))
    if section["status"] == LABELLED:
        if section["labels_sha256"] == label_set.fingerprint and log.finished_with(
            safety_set, hashlib.sha256(data).hexdigest()
        ):
            return current
        raise IsolationError(
            "this attempt was already decided on other labels (sha256 "
            f"{section['labels_sha256'][:12]}...): judging again until it passes would void "
            "the guarantee; certify a new policy on fresh safety prompts"
        )
    decided = decide_on_labels(current, label_set)
    text = json.dumps(decided.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()
    if not log.finished_with(safety_set, digest):  # else: the same decision, written again
        if not log.finished_with(safety_set, hashlib.sha256(data).hexdigest()):
            raise IsolationError(
                f"{path} is not the certification log's record of this attempt (a restored or "
                "edited copy, or an attempt already decided on other labels): refused"
            )
        number = current.attempts["number"]
        entry = next(a for a in current.attempts["log"] if a["number"] == number)
        done = replace(Attempt(**entry), upper_bound=decided.upper_bound, result=decided.result)
        log.finish(safety_set, done, digest)  # first the log: a crash leaves a refused file
    write_certificate(decided, path)
    return decided


def _read_certificate(path: Path) -> tuple[Certificate, bytes]:
    if not path.is_file():
        raise DataError(
            "no certificate in this run directory: run `certify --export-labelling FILE` first",
            path=str(path),
        )
    data = path.read_bytes()
    try:
        return Certificate.from_dict(json.loads(data)), data
    except ValueError as exc:
        raise DataError(f"not a certificate ({exc})", path=str(path)) from None


def _cost_range(certificate: Certificate) -> tuple[float, float] | None:
    return certificate.value_range if label_target(certificate.metric) == "expected_cost" else None


def decide_on_labels(awaiting: Certificate, labels: LabelSet) -> Certificate:
    """The certificate decided by the declared bound, with all three bounds and the judge.

    Args:
        awaiting: The logged certificate awaiting labels (its ``labelling`` block).
        labels: The judgements of its drawn responses, in draw order.
    """
    section = awaiting.labelling
    check_method_version(section["method"], section.get("method_version"))
    target = section["target"]
    y = labels.unsafe if target == "unsafe_rate" else labels.costs
    subset = LabelSubset(n=section["n"], indices=tuple(section["indices"]))
    if awaiting.safety_set is not None:  # a designated set: bounds over its own responses
        return decide_population(awaiting, labels, y, subset, status=LABELLED)
    bounds = label_rectified_bounds(
        awaiting.values,
        y,
        subset,
        target=target,
        confidence=awaiting.confidence,
        value_range=awaiting.value_range,
        weight=section["weight"],
        prediction_share=section["prediction_share"],
        method=section["method"],
    )
    decide = section["decide"]
    chosen = bounds.rectified if decide == "rectified" else bounds.labels_only
    estimate = chosen.estimate if decide == "rectified" else chosen.mean
    passed = bool(chosen.upper_bound <= awaiting.cost_threshold)
    plain = bounds.to_dict()
    decided_section = {
        **{k: v for k, v in section.items() if k != "status"},
        "status": LABELLED,
        "labels": list(y),
        **({"unsafe": list(labels.unsafe)} if target == "expected_cost" else {}),
        "labels_sha256": labels.fingerprint,
        "decided_by": decide,
        "bounds": {
            name: {"upper_bound": plain[name]["upper_bound"], "quantity": words, **plain[name]}
            for name, words in bound_quantities(target, awaiting).items()
        },
        "judge": judge_agreement(awaiting.values, labels.unsafe, subset.indices, awaiting.metric),
    }
    return replace(
        awaiting,
        bound=LABELLED_BOUNDS[decide],
        mean=float(estimate),
        std=None,
        upper_bound=float(chosen.upper_bound),
        passed=passed,
        result=CERTIFIED if passed else NSF,
        quantity=bound_quantities(target, awaiting)[decide],
        approximate=False,
        assumptions=_assumptions(bounds, decide),
        labelling=decided_section,
    )


def bound_quantities(target: str, certificate: Certificate) -> dict[str, str]:
    """What each of the three bounds bounds, in words with its units."""
    truth = (
        "the human-judged unsafe rate (share of responses the trusted labels call unsafe, a "
        "fraction in [0, 1])"
        if target == "unsafe_rate"
        else f"the human-judged expected cost (mean trusted cost label in "
        f"{list(certificate.value_range)}, raw cost units)"
    )
    return {
        "rectified": truth,
        "labels_only": truth,
        "cost_model_only": f"{certificate.quantity}: the cost model's judgement, NOT the truth",
    }


def _assumptions(bounds, decide: str) -> tuple[str, ...]:
    labels = (
        "the labels are trusted judgements of the exported responses, made without the cost "
        "model's scores; the bound is on what those judges would say, not on harm itself"
    )
    if decide == "rectified":
        return (*bounds.rectified.assumptions, labels)
    rectified = bounds.rectified.assumptions
    return (
        rectified[0],
        rectified[1],
        "labels_only: the exact bound from the labels alone (Clopper-Pearson for 0/1 labels, "
        "betting for costs in the declared range); the cost model's scores are not used",
        labels,
    )
