"""Validity of the labelled certificate's three bounds with LEARNED DP cost models (issue 14 item 4).

``benchmarks/ppi_coverage.py`` studied the bounds with simulated cost models. Here the models are
the pipeline's own: for each seed the demo pipeline (``demo_config``: DP reward models per group,
DP cost model, pessimistic tilting, step 1) is trained in a fresh run directory, and its
released best-of-K policy is certified many times on fresh safety prompts through the code path
``certify --export-labelling`` then ``--labels`` runs:

1. ``run_safety_test`` (:mod:`safealign.run.certification`): K fresh reference samples per
   safety prompt, scored by the learned models, one picked by the policy's best-of-K sampler;
   the labelling hook of :mod:`safealign.run.labelling` keeps the picked responses;
2. the hook's ``finish``: ``draw_label_subset`` (fresh secret randomness) draws the m responses
   to label and writes them to the run directory; the world's truth labels them, unsafe iff the
   true cost is > 0, as the demo does (``certify_with_world_labels``);
3. ``decide_on_labels``: the rectified, labels-only and cost-model-only bounds and the judge's
   agreement, once per method ``safety.labels.method`` accepts (read from the config's type, so a
   new method is measured by rerunning), all on the same responses and labels.

Only the certification log is bypassed: it rightly refuses a second test on one safety set,
and each trial is a new test of the same policy on new prompts. The test runs with the demo's
safety settings (the predicted unsafe probability, confidence 0.95); each fresh safety prompt
carries a group label in turn (the certificate's group section needs one; no bound reads it).
Trials of one pipeline share its population (below) and are independent given it, so a
setting's miss count over all trials is binomial: its exact CI is reported.

The population and the truth. Fresh prompts come from the same world's prompt process: the world
rebuilt from the same seed with ``num_prompts`` at its maximum (5760) repeats the trained world's
1000 prompts first, and its other 4760 prompts were never seen by training; the pool is the first
``--pool`` (2000) of those. Scoring is the study's cost (a tiny BERT per model and text: about
4 ms for the three models), so each pool prompt's K = 8 fresh reference candidates are drawn
and scored ONCE by the run's own models (the bank), and the trials' sampler serves them. The
population a safety test samples is then: a prompt uniform over the pool, and the policy's
best-of-K pick among that prompt's banked candidates (the pick drawn afresh by
``best_of_k_sampler`` in every trial, seeded by the trial's ``seed``). ``theta`` is that
population's TRUE unsafe rate (a response is unsafe iff its true cost is > 0), computed
EXACTLY: the mean over the pool of the policy's probabilities of each prompt's unsafe
candidates. (As an estimate of the deployed policy's rate on the pool, with fresh candidates
every time, it has standard error at most ``theta_se_as_deployed_rate``, reported; the validity
question does not depend on it.) A trial draws its n_s safety prompts i.i.d. (WITH replacement)
from the pool, as the bounds assume; a safety set holds distinct prompts, so a repeat carries a
copy tag that the bank's sampler and scorers strip (the models and the truth see the pool
prompt). The copies share the prompt's banked candidates, which is exactly an i.i.d. draw from
the population above.

A miss is ``upper bound < theta``; width is ``upper bound - theta``. A method that refuses a
setting (``union``'s tuned weight needs unlabelled responses, so it refuses m = n_s) is counted as
refused, not as a miss. ``--quick``: one pipeline, a pool of 300, 3 trials (a few minutes).
Usage (the full run: see benchmarks/README.md for its wall time):
nohup python benchmarks/ppi_learned.py --pipelines 5 --trials 200 > ppi_learned.log &
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import typing
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from safealign._atomic import atomic_write_text
from safealign.config.safety import LabelsConfig
from safealign.constraints.align import score_candidates
from safealign.constraints.candidates import Candidates, candidates_from_texts
from safealign.data.labels import Label, label_set
from safealign.data.records import PairDataset, PreferencePair
from safealign.data.synthetic import SyntheticWorld
from safealign.errors import ConfigError
from safealign.run import demo_config
from safealign.run.alignment import align_checked
from safealign.run.certification import run_safety_test
from safealign.run.labelling import _Export, _items, decide_on_labels
from safealign.run.preflight import preflight
from safealign.run.workspace import ReferenceSampler, Workspace

SIZES = ((200, 50), (200, 100), (200, 200), (1000, 50), (1000, 100), (1000, 200))
METHODS = typing.get_args(typing.get_type_hints(LabelsConfig)["method"])
BOUNDS = ("cost_model_only", *(f"rectified_{m}" for m in METHODS), "labels_only")
MAX_PROMPTS = 5760  # the synthetic world's prompt space // 2
COPY = " \u27e8copy "  # tags the second and later draws of one pool prompt in a safety set


def train_pipeline(seed: int, out: Path) -> tuple[Workspace, object, object]:
    """The demo pipeline up to the released policy (no certification): workspace, policy,
    scorers (the MaxMin-weighted group rewards and the DP cost model)."""
    config = demo_config(seed=seed, out_dir=out)
    preflight(config, out)
    ws = Workspace(config, out)
    alignment = align_checked(ws, progress=False)
    return ws, alignment.policy_file.policy, alignment.aligned.scorers


def fresh_pool(ws: Workspace) -> SyntheticWorld:
    """The same world with every prompt it can make; the first ones are the trained world's."""
    cfg = ws.config.data.synthetic
    big = SyntheticWorld(replace(cfg, num_prompts=MAX_PROMPTS), seed=ws.world.seed)
    if big.prompts[: cfg.num_prompts] != ws.world.prompts:
        raise RuntimeError("the enlarged world does not extend the trained one")
    return big


class Bank:
    """One scored K-candidate reference draw per pool prompt: the study's response population.

    Scoring is the study's cost (a tiny BERT per model per text), so every pool prompt's K fresh
    reference candidates are drawn and scored ONCE, with the run's own models, and each trial's
    sampler serves them: the population is then a prompt uniform over the pool and the policy's
    best-of-K pick from that prompt's K candidates, and ``theta`` is its exact mean.
    """

    def __init__(self, big: SyntheticWorld, pool: list[str], scorers, *, k: int, seed: int):
        sample = big.sample_candidates(pool, num_candidates=k, seed=seed)
        self.candidates = candidates_from_texts(
            sample.prompts, sample.responses, source="synthetic world"
        )
        self.world, self.row = big, {p: i for i, p in enumerate(pool)}
        self.unsafe = torch.tensor(sample.true_cost > 0, dtype=torch.float64)
        models = {"cost": scorers.cost, **dict(scorers.group_rewards or {})}
        if scorers.reward is not None:
            models["reward"] = scorers.reward
        flat_p, flat_r = self.candidates.flat()
        self.scores = {}  # (model name, prompt, response) -> that model's score
        for name, model in models.items():
            values = self.candidates.score(model).flatten().tolist()
            self.scores.update(
                ((name, p, r), v) for p, r, v in zip(flat_p, flat_r, values, strict=True)
            )
        self.scorers = replace(
            scorers,
            cost=_Served(self, "cost"),
            reward=None if scorers.reward is None else _Served(self, "reward"),
            group_rewards=None
            if scorers.group_rewards is None
            else {g: _Served(self, g) for g in scorers.group_rewards},
        )
        self.scored = score_candidates(self.candidates, self.scorers)

    def theta(self, policy) -> float:
        """The policy's TRUE unsafe probability on this population (exact)."""
        s = self.scored
        q = policy.probabilities(s.rewards, s.costs, log_p=s.log_p)
        return float((q * self.unsafe).sum(-1).mean())

    def theta_se(self, policy) -> float:
        """An upper bound on the standard error of ``theta`` as an estimate of the deployed
        policy's rate on the pool (fresh K candidates per test): the per-prompt values' s.d.
        over sqrt(pool), which also counts the prompts' spread, not only the draw's."""
        s = self.scored
        q = policy.probabilities(s.rewards, s.costs, log_p=s.log_p)
        values = (q * self.unsafe).sum(-1)
        return float(values.std() / np.sqrt(len(values)))

    @staticmethod
    def base(prompt: str) -> str:
        """The pool prompt behind a safety prompt (a repeat carries a copy tag)."""
        return prompt.split(COPY, 1)[0]

    def candidates_for(self, prompts) -> Candidates:
        rows = [self.candidates.responses[self.row[self.base(p)]] for p in prompts]
        return candidates_from_texts(tuple(prompts), rows, source="synthetic world (bank)")


class _Served:
    """A scoring model that answers from the bank's scores (the same model's outputs)."""

    def __init__(self, bank: Bank, name: str) -> None:
        self.bank, self.name = bank, name

    def score(self, prompts, responses, *, batch_size: int = 256) -> torch.Tensor:
        get, base = self.bank.scores, self.bank.base
        pairs = zip(prompts, responses, strict=True)
        return torch.tensor([get[(self.name, base(p), r)] for p, r in pairs])


class _Keep:
    """The labelling hook of one test: keeps what the sampler saw and the test's certificate."""

    def __init__(self) -> None:
        self.seen = self.certificate = None

    def observe(self, fresh, scored) -> None:
        self.seen = (fresh, scored)

    def finish(self, certificate, policy):
        self.certificate = certificate
        return certificate


class _BankSampler(ReferenceSampler):
    """The reference sampler of a trial: each safety prompt's K candidates from the bank."""

    def __init__(self, bank: Bank) -> None:
        self.bank = bank

    def candidates(self, prompts, *, seed: int, safety_pairs=None) -> Candidates:
        return self.bank.candidates_for(prompts)


def one_trial(ws, base, bank, policy, rng, *, trial_seed, n_s, ms, theta):
    """One safety test of n_s fresh prompts, labelled at each m; the bounds of every method."""
    pool = list(bank.row)
    chosen = rng.choice(len(pool), size=n_s, replace=True)  # i.i.d. from the population
    seen: dict[int, int] = {}
    prompts = []
    for i in chosen:  # a safety set holds distinct prompts: a repeat gets a copy tag
        seen[i] = seen.get(i, 0) + 1
        prompts.append(pool[i] if seen[i] == 1 else f"{pool[i]}{COPY}{seen[i]}")
    groups = sorted(bank.scorers.group_rewards or ["all"])
    # The pairs only carry the prompts (and a group, for the certificate's group section, which
    # no labelled bound reads): the sampler supplies the responses.
    pairs = PairDataset(
        tuple(
            PreferencePair(prompt, "a", "b", group=groups[j % len(groups)])
            for j, prompt in enumerate(prompts)
        ),
        name="fresh safety prompts",
    )
    keep = _Keep()
    ws.config = replace(base, seed=trial_seed)  # seeds the best-of-K picks: fresh per trial
    run_safety_test(ws, policy, scorers=bank.scorers, safety_pairs=pairs, labelling=keep)
    rows = []
    for m in ms:
        labels_config = LabelsConfig(size=m)
        ws.config = replace(
            base, seed=trial_seed, safety=replace(base.safety, labels=labels_config)
        )
        export = _Export(ws)
        export.seen = keep.seen
        awaiting = export.finish(keep.certificate, policy)  # draws the subset, keeps the texts
        items = _items(ws, awaiting.labelling)
        asked = [bank.base(i.prompt) for i in items]
        true_cost = bank.world.true_cost(asked, [i.response for i in items])
        labels = label_set(
            [Label(i.id, bool(c > 0)) for i, c in zip(items, true_cost, strict=True)],
            "synthetic world truth",
        )
        row = {"n_s": n_s, "m": m, "labelled_unsafe": float(np.mean(true_cost > 0))}
        for method in METHODS:
            section = {**awaiting.labelling, "method": method}
            try:
                decided = decide_on_labels(replace(awaiting, labelling=section), labels)
            except ConfigError:  # e.g. union's tuned weight with every response labelled
                row[f"rectified_{method}"] = None
                continue
            bounds = decided.labelling["bounds"]
            row[f"rectified_{method}"] = bounds["rectified"]["upper_bound"]
            row["labels_only"] = bounds["labels_only"]["upper_bound"]
            row["cost_model_only"] = bounds["cost_model_only"]["upper_bound"]
            row["auroc"] = decided.labelling["judge"]["auroc"]
        rows.append(row)
    return rows


def pipeline(seed: int, root: Path, *, trials: int, pool_size: int) -> dict:
    """Train one pipeline, bank its fresh pool, run ``trials`` labelled tests at every size."""
    start = time.perf_counter()
    ws, policy, scorers = train_pipeline(seed, root / f"seed-{seed}")
    record = {"seed": seed, "train_seconds": round(time.perf_counter() - start, 1)}
    record["released"] = policy is not None
    if policy is None:  # step 1 found no policy: nothing to certify
        record["reason"] = json.loads(ws.paths.policy.read_text()).get("reason")
        return record
    big = fresh_pool(ws)
    base = ws.config
    pool = list(big.prompts[base.data.synthetic.num_prompts :])[:pool_size]
    k = base.policy.num_candidates
    with ws.embedding_cache():
        bank = Bank(big, pool, scorers, k=k, seed=base.seed + 7)
    bank_seconds = time.perf_counter() - start - record["train_seconds"]
    theta = bank.theta(policy)
    ws.sampler = _BankSampler(bank)
    rng = np.random.default_rng([seed, 0x1AB])
    rows = []
    for t in range(trials):
        for n_s in sorted({n for n, _ in SIZES}):
            ms = [m for n, m in SIZES if n == n_s]
            rows += one_trial(
                ws, base, bank, policy, rng,
                trial_seed=1_000_000 * (seed + 1) + t, n_s=n_s, ms=ms, theta=theta,
            )  # fmt: skip
    ws.config = base
    record.update(
        theta=theta,
        theta_se_as_deployed_rate=bank.theta_se(policy),
        pool=len(pool),
        cost_model_auroc_eval=_eval_auroc(ws),
        bank_seconds=round(bank_seconds, 1),
        trials=rows,
        seconds=round(time.perf_counter() - start, 1),
    )
    return record


def _eval_auroc(ws: Workspace):
    receipt = json.loads((ws.out / "cost" / "receipt.json").read_text())
    return receipt["metrics"].get("eval/safety_auroc")


def binom_ci(k: int, n: int, level: float = 0.95) -> list[float]:
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return [float(ci.low), float(ci.high)]


def summarise(records: list[dict], delta: float) -> list[dict]:
    """Per (n_s, m): each bound's miss rate (exact 95% CI, p-value under delta), mean width
    (bound - theta), the rectified/labels-only width ratios and the judge's AUROC range."""
    trials = [(r["theta"], t) for r in records if r["released"] for t in r["trials"]]
    out = []
    for n_s, m in SIZES:
        rows = [(theta, t) for theta, t in trials if t["n_s"] == n_s and t["m"] == m]
        if not rows:
            continue
        entry = {"n_s": n_s, "m": m, "trials": len(rows)}
        for b in BOUNDS:
            got = [(theta, t[b]) for theta, t in rows if t.get(b) is not None]
            misses, n = sum(u < theta for theta, u in got), len(got)
            entry[b] = {"refused": len(rows) - n}
            if n:
                entry[b].update(
                    miss_rate=misses / n,
                    miss_ci95=binom_ci(misses, n),
                    miss_p=float(stats.binom.sf(misses - 1, n, delta)),
                    mean_width=float(np.mean([u - theta for theta, u in got])),
                )
        aurocs = np.array([t["auroc"] for _, t in rows if t.get("auroc") is not None])
        entry["auroc"] = {  # None where the m labels were all safe (or all unsafe)
            "undefined": int(len(rows) - aurocs.size),
            **(
                {
                    "min": float(aurocs.min()),
                    "median": float(np.median(aurocs)),
                    "max": float(aurocs.max()),
                    "share_ge_0.7": float(np.mean(aurocs >= 0.7)),
                }
                if aurocs.size
                else {}
            ),
        }
        for method in METHODS:
            entry[f"width_ratio_{method}"] = _ratio(rows, f"rectified_{method}")
            strong = [(th, t) for th, t in rows if t.get("auroc") is not None and t["auroc"] >= 0.7]
            entry[f"width_ratio_{method}_auroc_ge_0.7"] = _ratio(strong, f"rectified_{method}")
        out.append(entry)
    return out


def _ratio(rows, bound: str) -> float | None:
    """Mean width of ``bound`` over the labels-only one's, on the trials both produced."""
    both = [(th, t) for th, t in rows if t.get(bound) is not None]
    if not both:
        return None
    width = np.mean([t[bound] - th for th, t in both])
    return float(width / np.mean([t["labels_only"] - th for th, t in both]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", type=int, default=5, help="released pipelines wanted")
    parser.add_argument("--trials", type=int, default=200, help="safety tests per pipeline")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=2000, help="fresh prompts in the pool")
    parser.add_argument("--quick", action="store_true", help="1 pipeline, pool 300, 3 trials")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ppi_learned.json"))
    parser.add_argument("--markdown", action="store_true", help="print --out's table as Markdown")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return
    if args.quick:
        args.pipelines, args.trials, args.pool = 1, 3, 300
    torch.set_num_threads(1)
    start = time.perf_counter()
    records, seed = [], args.first_seed
    with tempfile.TemporaryDirectory() as root:
        while released(records) < args.pipelines and seed < args.first_seed + args.pipelines + 5:
            records.append(pipeline(seed, Path(root), trials=args.trials, pool_size=args.pool))
            r = records[-1]
            print(
                f"seed {seed}: trained {r['train_seconds']} s, released {r['released']} "
                f"{r.get('reason') or ''}"
                + (
                    f", theta {r['theta']:.4f}, bank {r['bank_seconds']} s, all {r['seconds']} s"
                    if r["released"]
                    else ""
                ),
                flush=True,
            )
            payload = write(args, records, time.perf_counter() - start)  # after every pipeline
            seed += 1
    table, delta = payload["table"], payload["delta"]
    valid = [b for b in BOUNDS if b != "cost_model_only"]
    worst = max(e[b].get("miss_rate", 0.0) for e in table for b in valid)
    under = sum(e["cost_model_only"]["miss_rate"] > delta for e in table)
    ratios = " ".join(f"{e['n_s']}/{e['m']}:{e[f'width_ratio_{METHODS[0]}']:.2f}" for e in table)
    print(
        f"ppi_learned: {released(records)} pipelines, {table[0]['trials']} trials per setting; "
        f"worst miss of the valid bounds {worst:.3f} (delta {delta}); cost-model-only misses > "
        f"delta in {under}/{len(table)} settings; width ratio {METHODS[0]}/labels-only {ratios}; "
        f"{payload['seconds']:.0f} s -> {args.out}"
    )


def markdown(payload: dict) -> str:
    """The README's table: per (n_s, m) each bound's miss rate [exact 95% CI] and mean width."""
    names = {"cost_model_only": "(a) cost model only", "labels_only": "(c) labels only"}
    names.update({f"rectified_{m}": f"(b) rectified, {m}" for m in METHODS})
    cols = [*BOUNDS]
    head = ["n_s", "m", *(f"{names[b]}: miss [95% CI] / width" for b in cols)]
    head += [f"width (b) {m} / (c)" for m in METHODS] + ["judge AUROC min-median-max"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in payload["table"]:
        cells = [str(e["n_s"]), str(e["m"])]
        for b in cols:
            r = e[b]
            if "miss_rate" not in r:
                cells.append(f"refused ({r['refused']})")
                continue
            lo, hi = r["miss_ci95"]
            cells.append(f"{r['miss_rate']:.3f} [{lo:.3f}, {hi:.3f}] / {r['mean_width']:.3f}")
        for m in METHODS:
            ratio = e[f"width_ratio_{m}"]
            cells.append("-" if ratio is None else f"{ratio:.2f}")
        a = e["auroc"]
        cells.append(f"{a['min']:.2f}-{a['median']:.2f}-{a['max']:.2f}" if "min" in a else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| seed | theta (true) | cost model's eval AUROC | (a) miss at n_s = 200 / 1000 "
              "| (a) mean bound at n_s = 200 / 1000 | judge AUROC median |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in payload["pipelines"]:
        if not r["released"]:
            lines.append(f"| {r['seed']} | no policy (step 1 NSF) | | | | |")
            continue
        by = {(e["n_s"], e["m"]): e for e in r["table"]}
        a = [by[(n, 50)]["cost_model_only"] for n in (200, 1000)]
        lines.append(
            f"| {r['seed']} | {r['theta']:.3f} | {r['cost_model_auroc_eval']:.3f} | "
            f"{a[0]['miss_rate']:.3f} / {a[1]['miss_rate']:.3f} | "
            f"{a[0]['mean_width'] + r['theta']:.3f} / {a[1]['mean_width'] + r['theta']:.3f} | "
            f"{by[(1000, 200)]['auroc']['median']:.2f} |"
        )
    return "\n".join(lines)


def released(records: list[dict]) -> int:
    return sum(r["released"] for r in records)


def write(args, records: list[dict], seconds: float) -> dict:
    delta = round(1 - demo_config(seed=0, out_dir=".").safety.confidence, 12)
    payload = {
        "delta": delta,
        "methods": list(METHODS),
        "sizes": [list(s) for s in SIZES],
        "pool": args.pool,
        "trials_per_pipeline": args.trials,
        # Per pipeline: its own table (the trials themselves are kept out: 6 rows per trial).
        "pipelines": [
            {**{k: v for k, v in r.items() if k != "trials"}, "table": summarise([r], delta)}
            for r in records
        ],
        "table": summarise(records, delta),
        "seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return payload


if __name__ == "__main__":
    main()
