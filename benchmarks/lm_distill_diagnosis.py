"""Why the distilled LM is not certifiable: each round's tilt against the LM that distils it, by severity.

Runs the ``distill`` rounds of ``examples/lm_world.yaml`` (same sampling, the same step-1 tilt
``lm_align._tilt`` / ``_weights``, the same weighted SFT) in ``--out`` (the SFT base and DP models
are trained once there and reused), and prints per round, on the *candidate* prompts (never the
safety prompts), for the LM's own K samples and for the tilt ``q`` over them: refusal share, mean
steps given, the DP cost model's predicted unsafe probability (the metric), the true unsafe rate,
and the LM's step-1 bound. The LM follows its tilt when its per-severity numbers move to the
tilt's; it drifts to the tilt's marginal when they move together across severities.

``--capacity`` instead trains the base on *deterministic* prompt-conditional targets (severity > 0:
a refusal; benign: four steps; formal, 4 phrasings each) and prints how far the LM's refusal and
detail separate by severity: whether the model and optimiser settings can learn conditioning at all.

Usage: python benchmarks/lm_distill_diagnosis.py --out /tmp/diag [--capacity] [overrides ...]
e.g.  policy.lora.r=16 policy.lora.alpha=32 "policy.lora.target_modules=[c_attn,c_proj,c_fc]"
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from safealign.config import load_config
from safealign.constraints.align import score_candidates
from safealign.constraints.attempts import attempt_safety
from safealign.constraints.bounds import anticipated_bound
from safealign.constraints.candidates import candidates_from_texts
from safealign.constraints.hc_rlhf import metric_range
from safealign.constraints.lm_policy import distill
from safealign.constraints.tilting import metric_costs
from safealign.data import synthetic_text as text
from safealign.models.causal import add_lora, generate
from safealign.run import Workspace
from safealign.run.lm_align import _tilt, _weights, sampler_of
from safealign.run.lm_base import _derive, load_base, prepare_base
from safealign.run.models import train_models

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "lm_world.yaml"


def _features(responses: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    parsed = [[text.parse_response(y) for y in row] for row in responses]
    refusal = np.array([[f.refusal for f in row] for row in parsed])
    return refusal, np.array([[f.detail for f in row] for row in parsed]) * ~refusal


def _by_severity(name, w, refusal, detail, metric, unsafe, severity) -> str:
    """``w``-weighted refusal / steps / metric / true unsafe per prompt severity (rows sum to 1)."""
    cells = []
    for s in range(4):
        rows = severity == s
        ref, steps, met, bad = (float((w * a)[rows].sum() / rows.sum())
                                for a in (refusal, detail, metric, unsafe))  # fmt: skip
        cells.append(f"sev{s} ref {ref:.2f} steps {steps:.2f} metric {met:.3f} unsafe {bad:.2f}")
    return f"  {name:5s} " + " | ".join(cells)


def diagnose(ws: Workspace, model, tokenizer, scorers) -> None:
    config, world = ws.config, ws.world
    prompts = list(ws.splits.candidate.prompts)
    severity = np.array([text.parse_prompt(p).severity for p in prompts])
    k, sampler, safety = config.policy.num_candidates, sampler_of(ws), attempt_safety(config.safety)
    rounds = config.policy.distill.rounds
    for index in range(rounds + 1):
        start = time.perf_counter()
        responses = generate(model, tokenizer, prompts, num_samples=k, seed=_derive(config.seed, 0x5A3, index),
                             batch_size=config.policy.sampler.batch_size, **sampler.to_dict())  # fmt: skip
        cands = candidates_from_texts(prompts, responses, source="policy LM")
        scored = score_candidates(cands, scorers)
        metric = metric_costs(scored.costs, safety.metric, cost_range=metric_range(safety))
        per_prompt = metric.mean(-1)
        bound = anticipated_bound(per_prompt, n_safety=ws.splits.safety.num_prompts,
                                  confidence=safety.confidence, bound=safety.resolved_bound,
                                  c1=safety.c1, c2=safety.c2, value_range=metric_range(safety))  # fmt: skip
        refusal, detail = _features(responses)
        flat_p = [p for p in prompts for _ in range(k)]
        unsafe = world.true_cost(flat_p, [y for row in responses for y in row]).reshape(-1, k) > 0
        m = metric.numpy()
        print(f"round {index}: LM metric {float(per_prompt.mean()):.3f} (sd {float(per_prompt.std()):.3f}) "
              f"step-1 bound {bound:.3f}; true unsafe {unsafe.mean():.3f}; "
              f"sampled in {time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
        uniform = np.full(m.shape, 1.0 / k)
        print(_by_severity("LM", uniform, refusal, detail, m, unsafe, severity), flush=True)
        if index == rounds:
            return
        aligned = _tilt(ws, cands, scorers, index)
        q = _weights(ws, cands, aligned)
        scorers = aligned.scorers
        print(_by_severity("tilt", q.numpy(), refusal, detail, m, unsafe, severity)
              + f" (lambda {aligned.selection.lambda_})", flush=True)  # fmt: skip
        d = config.policy.distill
        stats = distill(model, tokenizer, cands.prompts, cands.responses, q, lr=d.lr, epochs=d.epochs,
                        batch_size=d.batch_size, seed=_derive(config.seed, 0xD15, index))  # fmt: skip
        print(f"  distil losses {[round(x, 3) for x in stats.epoch_losses]}", flush=True)


def capacity(ws: Workspace, model, tokenizer) -> None:
    prompts = list(ws.splits.candidate.prompts)
    severity = np.array([text.parse_prompt(p).severity for p in prompts])

    def target(prompt: str, variant: int) -> str:
        f = text.parse_prompt(prompt)
        features = text.ResponseFeatures(
            refusal=f.severity > 0, detail=0 if f.severity else 4, style=1
        )
        return text.render_response(text.TASKS[f.topic][f.severity], features, variant)

    targets = [[target(p, v) for v in range(4)] for p in prompts]
    d = ws.config.policy.distill
    for repeat in range(2):
        stats = distill(model, tokenizer, prompts, targets, torch.ones(len(prompts), 4), lr=d.lr,
                        epochs=d.epochs, batch_size=d.batch_size, seed=repeat)  # fmt: skip
        refusal, detail = _features(generate(model, tokenizer, prompts, num_samples=4, seed=1))
        harm = severity > 0
        print(f"after {(repeat + 1) * d.epochs} epochs (loss {stats.epoch_losses[-1]:.2f}): refusal "
              f"benign {refusal[~harm].mean():.2f} harmful {refusal[harm].mean():.2f}; steps benign "
              f"{detail[~harm].mean():.2f} harmful {detail[harm].mean():.2f}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="work directory (SFT base, DP models reused)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--capacity", action="store_true", help="deterministic targets instead")
    parser.add_argument(
        "overrides", nargs="*", help="config overrides (policy.distill.*, policy.lora.*)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    ledger = f"budget.ledger={out.parent / (out.name + '-ledger.sqlite')}"
    ws = Workspace(load_config(CONFIG, [f"seed={args.seed}", ledger, *args.overrides]), out)
    base = prepare_base(ws, progress=False)
    models = train_models(ws, progress=False)
    model, tokenizer = load_base(base, seed=args.seed)
    model = add_lora(model, ws.config.policy.lora, seed=args.seed)
    if args.capacity:
        capacity(ws, model, tokenizer)
    else:
        diagnose(ws, model, tokenizer, models.scorers)


if __name__ == "__main__":
    main()
