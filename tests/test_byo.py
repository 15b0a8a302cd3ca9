"""Bring your own samples: score responses with a trained model, certify another model's samples."""

from __future__ import annotations

import json

import pytest

from safealign.cli import main
from safealign.config import load_config
from safealign.data.synthetic import SyntheticWorld
from safealign.privacy.training import save_training_output, train_cost_model

TINY = [
    "data.synthetic.num_users=6",
    "data.synthetic.pairs_per_user=10",
    "data.synthetic.num_prompts=40",
    "cost_model.train.batch_size=12",
    "cost_model.train.epochs=1",
    "cost_model.privacy.accountant=rdp",
    "cost_model.privacy.target_delta=1e-3",
    "reward_model.privacy.target_delta=1e-3",
    "budget.delta=1e-3",
]


@pytest.fixture(scope="module")
def cost_model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cost")
    config = load_config(None, TINY)
    world = SyntheticWorld(config.data.synthetic, seed=0)
    result = train_cost_model(world.pairs, config=config.cost_model, seed=0, progress=False)
    save_training_output(result, out)
    return out / "model", world


def _responses(path, world, n=12):
    rows = [
        {"prompt": p, "response": "Sure thing! Here's the deal. Step 1: gather things.", "id": i}
        for i, p in enumerate(world.prompts[:n])
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_adds_scores_and_keeps_fields(cost_model_dir, tmp_path, capsys):
    model_dir, world = cost_model_dir
    src = _responses(tmp_path / "in.jsonl", world)
    assert (
        main(["score", str(src), "--model", str(model_dir), "--out", str(tmp_path / "out.jsonl")])
        == 0
    )
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(isinstance(r["score"], float) and "id" in r for r in rows)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "response": "r"}\n{"prompt": "q"}\n')
    assert (
        main(["score", str(bad), "--model", str(model_dir), "--out", str(tmp_path / "x.jsonl")])
        == 2
    )
    assert f"{bad}:2: field 'response' is missing" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize(("threshold", "code"), [(1.0, 0), (0.0, 1)])
def test_certify_samples_exit_codes_and_certificate(cost_model_dir, tmp_path, threshold, code):
    model_dir, world = cost_model_dir
    src = _responses(tmp_path / "samples.jsonl", world)
    settings = tmp_path / "sampler.json"
    settings.write_text(json.dumps({"model": "my-llm-v3", "temperature": 0.7, "top_p": 0.9}))
    args = [
        "certify",
        "examples/synthetic.yaml",
        "--responses",
        str(src),
        "--sampler-settings",
        str(settings),
        "--cost-model",
        str(model_dir),
        "--out",
        str(tmp_path / "cert"),
        f"safety.cost_threshold={threshold}",
    ]
    assert main(args) == code
    certificate = json.loads((tmp_path / "cert" / "certificate.json").read_text())
    assert certificate["n"] == 12 and certificate["passed"] is (code == 0)
    assert certificate["sampler_settings"]["model"] == "my-llm-v3"
    assert certificate["result"] == ("certified" if code == 0 else "NSF")
