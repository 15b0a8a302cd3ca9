"""The plot of ``benchmarks/privacy_utility.py``: HH-RLHF accuracy against ε (left) and synthetic
accuracy against n next to Bayes (right), from the benchmark's JSON payload.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot(payload: dict[str, object], path: Path) -> None:
    """Left: HH-RLHF accuracy against ε. Right: synthetic accuracy against n, with Bayes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [k for k in ("hh_cost", "synthetic") if k in payload]
    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 4), squeeze=False)
    for ax, part in zip(axes[0], parts, strict=True):
        data = payload[part]
        if part == "hh_cost":
            labels = list(data["pair_accuracy"])
            xs = np.arange(len(labels))
            means = [data["pair_accuracy"][k]["mean"] for k in labels]
            stds = [data["pair_accuracy"][k]["std"] for k in labels]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=4, label="mean ± std over seeds")
            for i, key in enumerate(labels):
                eps = None if key == "non_private" else float(key)
                accs = [r["pair_accuracy"] for r in data["runs"] if r["target_epsilon"] == eps]
                ax.scatter([i] * len(accs), accs, color="grey", s=12, zorder=3)
            ax.axhline(0.5, color="black", lw=0.8, ls=":", label="chance")
            ax.set_xticks(xs, [("non-private" if k == "non_private" else f"ε={k}") for k in labels])
            ax.set_ylabel("held-out pair accuracy")
            ax.set_title(
                f"HH-RLHF harmless-base cost model\n{data['backbone']} + LoRA, "
                f"{data['train_pairs']} train / {data['eval_pairs']} eval pairs"
            )
        else:
            rows = data["by_n"]
            ns = [r["n"] for r in rows]
            for key, label in (
                ("dp", f"DP ε={data['target_epsilon']:g}"),
                ("non_private", "non-private"),
            ):
                pts = [(r["n"], r[key]) for r in rows if key in r]
                ax.errorbar(
                    [p[0] for p in pts],
                    [p[1]["mean"] for p in pts],
                    yerr=[p[1]["std"] for p in pts],
                    marker="o",
                    capsize=4,
                    label=label,
                )
            ax.axhline(data["bayes_accuracy"], color="green", ls="--", label="Bayes accuracy")
            ax.axhline(
                data["bayes_accuracy"] - 0.02,
                color="green",
                ls=":",
                lw=0.8,
                label="Bayes − 2 points",
            )
            ax.axhline(
                data["bayes_rule_realised_accuracy"],
                color="purple",
                ls="-.",
                lw=0.8,
                label="Bayes rule on these eval labels",
            )
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(ns, [str(n) for n in ns])
            ax.set_xlabel("training pairs n")
            ax.set_ylabel("held-out pair accuracy")
            ax.set_title(f"Synthetic world, tiny backbone\n{data['eval_pairs']} eval pairs")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
