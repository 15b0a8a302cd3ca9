"""The report's plots, drawn with matplotlib's Agg renderer straight to PNG bytes.

Figures are built with :class:`matplotlib.figure.Figure` and an Agg canvas, never with pyplot:
no global figure registry, no GUI backend, safe in threads and in headless runs. PNGs are
written without a timestamp or software tag, so the same report gives the same bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from safealign.audits.summary import metric_words

__all__ = ["PLOTS", "render_plot"]

_SIZE = (6.4, 3.4)
_DPI = 100
_BLUE, _GREY, _RED, _GREEN, _ORANGE = "#2f6db5", "#8c8c8c", "#c0392b", "#2e8b57", "#e08e0b"


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    return buffer.getvalue()


def _label(text: Any) -> str:
    """User text as a literal matplotlib label: a ``$`` would otherwise start mathtext."""
    return str(text).replace("$", r"\$")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def privacy_plot(report: dict[str, Any]) -> bytes | None:
    """Bars: each model's ε alone, the composed ε and the naive sum, against the budget ε."""
    privacy = report["privacy"]
    if not privacy["mechanisms"]:
        return None
    labels, values, colours = [], [], []
    for mechanism in privacy["mechanisms"]:
        labels.append(_label(mechanism["kind"]))
        values.append(mechanism["epsilon"] if _finite(mechanism["epsilon"]) else 0.0)
        colours.append(_BLUE if mechanism["private"] else _RED)
    if privacy["private"]:
        labels += ["composed", "naive sum"]
        values += [privacy["epsilon"], privacy["naive_sum_epsilon"] or 0.0]
        colours += [_GREEN, _GREY]
    figure = Figure(figsize=_SIZE)
    axes = figure.add_subplot()
    bars = axes.bar(labels, values, color=colours)
    for bar, mechanism in zip(bars, privacy["mechanisms"], strict=False):
        if not mechanism["private"]:
            axes.annotate(
                "NON-PRIVATE (ε = ∞)",
                (bar.get_x() + bar.get_width() / 2, 0),
                color=_RED,
                ha="center",
                va="bottom",
                rotation=90,
                fontsize=8,
            )
    budget = privacy["budget"]["epsilon"]
    if _finite(budget):
        axes.axhline(budget, color=_RED, linestyle="--", label=f"budget ε = {budget:g}")
        axes.legend(loc="upper left", fontsize=8)
    delta = privacy["delta"]
    axes.set_ylabel("ε" + (f" at δ = {delta:g}" if _finite(delta) else ""))
    if privacy["private"]:
        axes.set_title("Privacy spent")
    else:
        axes.set_title("Privacy spent: NON-PRIVATE run, no guarantee", color=_RED)
    return _png(figure)


def cost_plot(report: dict[str, Any]) -> bytes | None:
    """The safety prompts' costs (histogram, or mean-to-upper-bound interval) and the threshold."""
    safety = report.get("safety")
    if not safety:
        return None
    costs = [c for c in safety.get("costs") or () if _finite(c)]
    mean, bound, threshold = safety.get("mean"), safety["upper_bound"], safety["cost_threshold"]
    figure = Figure(figsize=_SIZE)
    axes = figure.add_subplot()
    if costs:
        axes.hist(costs, bins=min(40, max(5, int(math.sqrt(len(costs))))), color=_BLUE, alpha=0.7)
        axes.set_xlabel("cost on a safety prompt")
        axes.set_ylabel("prompts")
        for value, colour, style, name in (
            (mean, _BLUE, "-", "mean"),
            (bound, _ORANGE, "-", "upper bound"),
            (threshold, _RED, "--", "threshold τ"),
        ):
            if _finite(value):
                axes.axvline(value, color=colour, linestyle=style, label=f"{name} = {value:.4g}")
    else:
        if _finite(mean) and _finite(bound):
            axes.errorbar(
                [mean],
                [0],
                xerr=[[0], [max(bound - mean, 0.0)]],
                fmt="o",
                color=_BLUE,
                ecolor=_ORANGE,
                capsize=6,
                label=f"mean {mean:.4g} → upper bound {bound:.4g}",
            )
        elif _finite(bound):
            axes.plot([bound], [0], "o", color=_ORANGE, label=f"upper bound {bound:.4g}")
        if _finite(threshold):
            axes.axvline(
                threshold, color=_RED, linestyle="--", label=f"threshold τ = {threshold:.4g}"
            )
        axes.set_yticks([])
        axes.set_xlabel(_label(metric_words(safety.get("metric"))))
    verdict = "certified" if safety["passed"] else "No Solution Found"
    axes.set_title(f"Safety test on {safety['n']} prompts: {verdict}")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=8)
    return _png(figure)


def groups_plot(report: dict[str, Any]) -> bytes | None:
    """Each group's expected reward with its interval; the worst group in red."""
    groups = report.get("groups")
    if not groups or not groups["groups"]:
        return None
    names = sorted(groups["groups"])
    figure = Figure(figsize=_SIZE)
    axes = figure.add_subplot()
    for x, name in enumerate(names):
        entry = groups["groups"][name]
        reward = entry.get("reward")
        if not _finite(reward):
            continue
        interval = entry.get("reward_ci") or [None, None]
        low = reward - interval[0] if _finite(interval[0]) else 0.0
        high = interval[1] - reward if _finite(interval[1]) else 0.0
        colour = _RED if name == groups["worst_group"] else _BLUE
        axes.errorbar(
            [x],
            [reward],
            yerr=[[max(low, 0.0)], [max(high, 0.0)]],
            fmt="o",
            color=colour,
            capsize=6,
        )
    axes.set_xticks(range(len(names)), [_label(n) for n in names])
    axes.set_xlim(-0.5, len(names) - 0.5)
    axes.set_ylabel("expected reward")
    axes.set_title("Reward per group (worst in red)")
    return _png(figure)


def privacy_utility_plot(report: dict[str, Any]) -> bytes | None:
    """Accuracy against ε from ``extra["privacy_utility"]``, with this run's ε marked."""
    points = [
        (p["epsilon"], p["accuracy"])
        for p in (report.get("extra") or {}).get("privacy_utility") or ()
        if _finite(p.get("epsilon")) and _finite(p.get("accuracy"))
    ]
    if not points:
        return None
    points.sort()
    figure = Figure(figsize=_SIZE)
    axes = figure.add_subplot()
    axes.plot([p[0] for p in points], [p[1] for p in points], "o-", color=_BLUE)
    epsilon = report["privacy"]["epsilon"]
    if _finite(epsilon):
        axes.axvline(epsilon, color=_GREEN, linestyle="--", label=f"this run ε = {epsilon:.3g}")
        axes.legend(fontsize=8)
    axes.set_xlabel("ε")
    axes.set_ylabel("accuracy")
    axes.set_title("Privacy–utility trade-off")
    return _png(figure)


def reliability_plot(report: dict[str, Any]) -> bytes | None:
    """The cost model's reliability diagram on the labelled responses (``safety.labelling``)."""
    labelling = (report.get("safety") or {}).get("labelling") or {}
    bins = [b for b in (labelling.get("judge") or {}).get("reliability") or () if b["count"]]
    if not bins:
        return None
    figure = Figure(figsize=_SIZE)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle="--", color=_GREY, label="perfect calibration")
    axes.plot(
        [b["mean_predicted"] for b in bins],
        [b["unsafe_rate"] for b in bins],
        "o-",
        color=_BLUE,
        label="labelled responses (per bin)",
    )
    for b in bins:
        axes.annotate(str(b["count"]), (b["mean_predicted"], b["unsafe_rate"]), fontsize=7)
    axes.set_xlim(0, 1)
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("cost model's predicted unsafe probability")
    axes.set_ylabel("share labelled unsafe")
    axes.set_title("The cost model against trusted labels")
    axes.legend(fontsize=8)
    return _png(figure)


PLOTS: dict[str, Callable[[dict[str, Any]], bytes | None]] = {
    "privacy": privacy_plot,
    "cost": cost_plot,
    "groups": groups_plot,
    "privacy_utility": privacy_utility_plot,
    "reliability": reliability_plot,
}


def render_plot(key: str, report: dict[str, Any]) -> bytes | None:
    """The PNG of plot ``key`` for ``report``, or ``None`` when there is nothing to draw."""
    return PLOTS[key](report)
