"""The smallest whole run of examples/synthetic.yaml that still trains, aligns and certifies."""

from __future__ import annotations

from pathlib import Path

CONFIG = str(Path(__file__).resolve().parents[1] / "examples" / "synthetic.yaml")

#: Overrides shared by the tests that run the whole pipeline on a tiny world (add groups/safety).
TINY_WORLD = [
    "data.synthetic.num_prompts=150",
    "data.synthetic.num_users=10",
    "data.synthetic.pairs_per_user=20",
    "reward_model.lora=null",
    "cost_model.lora=null",
    "reward_model.train.epochs=1",
    "cost_model.train.epochs=1",
    "reward_model.train.batch_size=32",
    "cost_model.train.batch_size=32",
    "reward_model.privacy.accountant=rdp",
    "cost_model.privacy.accountant=rdp",
    "reward_model.privacy.target_delta=1e-3",
    "cost_model.privacy.target_delta=1e-3",
    "budget.delta=1e-3",
    "policy.num_candidates=4",
]
