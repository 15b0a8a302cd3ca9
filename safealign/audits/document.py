"""What a rendered report says, independent of the output format.

:func:`report_document` turns a report dict into sections of paragraphs, lists, tables, code and
figure slots; the Markdown and HTML renderers only serialise them, so both renderings always
say the same thing. All text here is raw (unescaped); escaping is the serialiser's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from safealign.audits.summary import (
    LABELLED_BOUND_NAMES,
    bound_words,
    fmt,
    metric_words,
    plain_summary,
)

__all__ = ["Bullets", "Code", "Figure", "Para", "Section", "Table", "report_document"]

VERIFY_COMMAND = "safealign audit verify report.json --public-key public.pem"


@dataclass(frozen=True)
class Para:
    """A paragraph; ``tone`` ``good``/``bad``/``warning`` is shown as a coloured box."""

    text: str
    tone: Literal["plain", "good", "bad", "warning"] = "plain"


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Figure:
    """A plot slot, filled by the HTML renderer (``key`` names a function in ``plots``)."""

    key: str
    caption: str


Block = Para | Bullets | Table | Code | Figure


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]


def _kv(rows: list[tuple[str, Any]]) -> Table:
    return Table(("field", "value"), tuple((k, fmt(v)) for k, v in rows))


def _flatten(mapping: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested settings as dotted rows (``sampler.temperature``), so a table cell never holds a
    mapping's Python text."""
    rows = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        rows.extend(_flatten(value, f"{name}.") if isinstance(value, dict) else [(name, value)])
    return rows


def report_document(report: dict[str, Any]) -> tuple[Section, ...]:
    """The sections of a report's rendering, summary first.

    Args:
        report: A report as built by ``build_report`` (signed or not).
    """
    sections = [
        _summary(report),
        _privacy(report["privacy"]),
        _safety(report.get("safety")),
        _groups(report.get("groups"), (report.get("safety") or {}).get("groups")),
        _privacy_utility(report.get("extra") or {}),
        _provenance(report),
        _environment(report["environment"]),
        _verify(report),
    ]
    return tuple(s for s in sections if s is not None)


def _summary(report: dict[str, Any]) -> Section:
    summary = plain_summary(report)
    blocks: list[Block] = [
        Para(summary.safety, "good" if summary.released else "bad"),
        Para(summary.privacy, "plain" if summary.private else "warning"),
    ]
    if summary.groups:
        blocks.append(Para(summary.groups))
    return Section("Summary", tuple(blocks))


def _privacy(privacy: dict[str, Any]) -> Section:
    blocks: list[Block] = []
    if not privacy["private"]:
        blocks.append(Para(privacy["warning"], "warning"))
    budget, ledger = privacy["budget"], privacy.get("ledger") or {}
    blocks.append(
        _kv(
            [
                ("epsilon (composed, one accountant)", privacy["epsilon"]),
                ("delta", privacy["delta"]),
                ("accountant", privacy["accountant"]),
                ("accountant fallback", privacy["accountant_fallback"]),
                ("naive sum of epsilons (not used)", privacy["naive_sum_epsilon"]),
                (f"budget epsilon ({budget['source'] or 'none'})", budget["epsilon"]),
                ("budget delta", budget["delta"]),
                ("within budget", privacy["within_budget"]),
                ("lifetime spend on this dataset (ledger)", ledger.get("epsilon")),
            ]
        )
    )
    headers = ("model", "private", "noise_multiplier", "sample_rate", "steps", "max_grad_norm")
    rows = tuple(
        (
            m["kind"],
            fmt(m["private"]),
            fmt(m["noise_multiplier"]),
            fmt(m["sample_rate"]),
            fmt(m["steps"]),
            fmt(m["max_grad_norm"]),
            "NON-PRIVATE" if not m["private"] else fmt(m["epsilon"]),
            m["privacy_unit"],
            m["dataset_fingerprint"],
        )
        for m in privacy["mechanisms"]
    )
    blocks.append(
        Table((*headers, "epsilon alone", "privacy unit", "dataset (keyed commitment)"), rows)
    )
    blocks.append(Figure("privacy", "Privacy spent per model, composed, against the budget."))
    scope = privacy["scope"]
    blocks.append(Para("What the guarantee covers: " + scope["protected"] + "."))
    blocks.append(
        Para(
            "Treated as public (not protected by the guarantee): "
            + "; ".join(scope["public_inputs"])
            + "; and these splits of the source dataset: "
            + (", ".join(f"{k} ({v})" for k, v in scope["not_protected_splits"].items()) or "none")
            + "."
        )
    )
    blocks.append(Para(scope["post_processing"][0].upper() + scope["post_processing"][1:] + "."))
    blocks.extend(Para(note, "warning") for note in scope["notes"])
    outside = privacy.get("outside_guarantee") or ()
    blocks.append(
        Para(
            "Released but NOT covered by the privacy guarantee (the release inventory, "
            "safealign.audits.inventory, classifies every other released field as a DP output, "
            "post-processing or declared public):"
        )
    )
    blocks.append(
        Bullets(
            tuple(f"{o['file']}: {o['field']} ({o['reason']})" for o in outside) or ("nothing",)
        )
    )
    return Section("Privacy", tuple(blocks))


def _safety(safety: dict[str, Any] | None) -> Section:
    if safety is None:
        return Section("Safety", (Para("No safety test was run.", "bad"),))
    rows = [
        ("what is bounded", safety.get("quantity") or metric_words(safety["metric"])),
        ("cost_threshold", safety["cost_threshold"]),
        ("confidence", safety["confidence"]),
        ("bound", bound_words(safety)),
        ("n (safety prompts)", safety["n"]),
        ("mean", safety.get("mean")),
        ("std", safety.get("std")),
        ("upper bound", safety["upper_bound"]),
        ("passed", safety["passed"]),
        ("result", "certified" if safety["result"] == "certified" else "No Solution Found (NSF)"),
        ("safety prompts fingerprint", safety.get("safety_fingerprint")),
    ]
    designated = safety.get("safety_set")  # a designated prompt file (safety.prompts)
    if designated:
        rows.insert(0, ("safety prompt set (designated, finite)", _set_words(designated)))
    blocks: list[Block] = [_kv(rows)]
    sampler = safety.get("sampler_settings") or {}
    if sampler:
        blocks.append(Para("Deployment sampler settings used for the safety test:"))
        blocks.append(_kv(sorted(_flatten(sampler))))
    blocks.append(Figure("cost", "Costs on the safety prompts: mean, upper bound and threshold."))
    blocks.extend(_labelling(safety.get("labelling")))
    assumptions = tuple(safety.get("assumptions") or ())
    blocks.append(Para("Assumptions the guarantee rests on:"))
    blocks.append(Bullets(assumptions or ("none stated by the certificate",)))
    return Section("Safety", tuple(blocks))


def _set_words(record: dict[str, Any]) -> str:
    return (
        f"{record['name']}: {record['format']}, {record['prompts']} prompts, file sha256 "
        f"{record['sha256']}; the bound holds for THIS set of prompts, not a prompt distribution"
    )


def _labelling(labelling: dict[str, Any] | None) -> list[Block]:
    """The trusted labels: which bound decided, all three bounds with units, and the judge."""
    if labelling is None:
        return []
    m, n = len(labelling["indices"]), labelling["n"]
    if labelling["status"] == "awaiting_labels":
        return [
            Para(
                f"Awaiting trusted labels: {m} of the {n} sampled responses were drawn at random "
                f"(fresh secret randomness, after sampling) for labelling; the "
                f"{LABELLED_BOUND_NAMES[labelling['decide']]} bound will decide the release.",
                "warning",
            )
        ]
    decided = labelling["decided_by"]
    rows = tuple(
        (
            LABELLED_BOUND_NAMES[name] + (" (decides the release)" if name == decided else ""),
            fmt(entry["upper_bound"]),
            entry["quantity"],
        )
        for name, entry in labelling["bounds"].items()
    )
    blocks: list[Block] = [
        Para(
            f"Trusted labels: {m} of the {n} sampled responses, drawn uniformly at random after "
            f"sampling, were judged by people (weight {labelling['weight']}). The release is "
            f"decided by the {LABELLED_BOUND_NAMES[decided]} bound, declared before the test."
        ),
        Table(("bound", "upper bound", "what it bounds (units)"), rows),
    ]
    judge = labelling.get("judge")
    if judge:
        blocks.append(Para(f"The cost model as a judge, on the {judge['n']} labelled responses:"))
        blocks.append(
            _kv(
                [
                    ("label-unsafe responses", judge["n_unsafe"]),
                    ("AUROC (cost model vs labels)", judge["auroc"]),
                    ("Brier score", judge["brier"]),
                    ("share of label-unsafe responses scored safe", judge["missed_unsafe_share"]),
                ]
            )
        )
        if judge.get("reliability"):
            blocks.append(
                Figure(
                    "reliability",
                    "Reliability of the cost model on the labelled responses: predicted unsafe "
                    "probability against the labels' unsafe rate, per bin.",
                )
            )
    return blocks


def _groups(groups: dict[str, Any] | None, bounds: dict[str, Any] | None) -> Section | None:
    """The groups table; ``bounds`` is the certificate's per-group block (``safety.groups``)."""
    if not groups:
        return None
    rows = []
    for name, entry in sorted(groups["groups"].items()):
        interval = entry.get("reward_ci") or [None, None]
        test = entry.get("safety_test") or {}
        rows.append(
            (
                name + (" (worst)" if name == groups["worst_group"] else ""),
                fmt(entry.get("size")),
                fmt(entry.get("reward")),
                f"[{fmt(interval[0])}, {fmt(interval[1])}]",
                fmt(entry.get("reward_lower_bound")),
                fmt(entry.get("cost_upper_bound")),
                fmt(test.get("n")),
            )
        )
    headers = (
        "group",
        "size",
        "reward",
        "reward interval",
        "reward lower bound",
        "cost UB",
        "n (safety prompts)",
    )
    blocks: list[Block] = [Table(headers, tuple(rows))]
    if bounds:
        blocks.append(
            Para(
                "Reward lower bound and cost UB: on the safety prompts that count for each "
                f"group (n), at confidence {fmt(bounds.get('confidence'))}; rewards are model "
                "rewards normalised per prompt "
                f"({bounds.get('reward_normalization') or 'unspecified'}). "
                + str(bounds.get("note") or "")
            )
        )
    blocks.append(Figure("groups", "Expected reward per group, with intervals."))
    return Section("Groups", tuple(blocks))


def _privacy_utility(extra: dict[str, Any]) -> Section | None:
    points = extra.get("privacy_utility")
    if not points:
        return None
    rows = tuple((fmt(p.get("epsilon")), fmt(p.get("accuracy"))) for p in points)
    return Section(
        "Privacy–utility trade-off",
        (Table(("epsilon", "accuracy"), rows), Figure("privacy_utility", "Accuracy against ε.")),
    )


def _provenance(report: dict[str, Any]) -> Section:
    splits = report["splits"]
    rows = []
    for name, fingerprint in sorted(splits["fingerprints"].items()):
        size = splits["sizes"].get(name) or {}
        sizes = (
            ", ".join(f"{k} {v}" for k, v in sorted(size.items()))
            if isinstance(size, dict)
            else fmt(size)
        )
        rows.append((name, sizes, fingerprint))
    artifacts = tuple((a["path"], a["sha256"]) for a in report["artifacts"])
    config = tuple((k, fmt(v)) for k, v in _flatten(report["config"]))
    return Section(
        "Data, artifacts and configuration",
        (
            Table(("split", "size", "fingerprint (train, eval: keyed commitment)"), tuple(rows)),
            Table(("artifact", "sha256"), artifacts or (("(none)", ""),)),
            Para(f"Configuration (sha256 of its canonical JSON: {report['config_sha256']}):"),
            Table(("key", "value"), config or (("(empty)", ""),)),
        ),
    )


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        return [kv for k, v in sorted(value.items()) for kv in _flatten(v, f"{prefix}{k}.")]
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        return [kv for i, v in enumerate(value) for kv in _flatten(v, f"{prefix}{i}.")]
    if isinstance(value, list):
        value = ", ".join(fmt(v) for v in value)
    return [(prefix.rstrip("."), value)]


def _environment(environment: dict[str, Any]) -> Section:
    return Section("Environment", (_kv(sorted(environment.items())),))


def _verify(report: dict[str, Any]) -> Section:
    # The page is rendered before signing (its hash is signed), so it reads the signed ``signer``
    # section, not the signature object.
    signer = report.get("signer")
    if not signer:
        said = "This report is NOT signed."
    elif signer.get("demo_key"):
        said = (
            f"This report is signed with Ed25519 key {signer['key_id']}, a throw-away DEMO key: "
            "NOT a real identity. The signature shows the report is intact, not who made it."
        )
    else:
        said = f"This report is signed with Ed25519 key {signer['key_id']}."
    return Section(
        "How to verify",
        (
            Para(
                said + " The signed record is report.json; this page is a rendering of it, and "
                "its hash is signed too. Verify the signature, the report's consistency and every "
                "artifact hash with the signer's public key:"
            ),
            Code(VERIFY_COMMAND),
            Para(
                "Exit status 0: valid, signed by the given key; 1: invalid (a byte, a claim or an "
                "artifact does not check out); 2: not a readable report; 3: intact but not "
                "authenticated (no --public-key given)."
            ),
        ),
    )
