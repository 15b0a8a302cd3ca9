"""Every shipped example config runs end to end through the CLI, at tiny scale.

Each run keeps the example's own settings and overrides only what makes it small or offline: a
tiny backbone built in code instead of a downloaded one, a slice of the data, fewer candidates.
What is exercised is the example's *shape* (head mode, LoRA, data format and loader keys, safety
metric and bound), which is what breaks when a key is renamed or a stage's data precondition is
not met.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from safealign.cli import main
from safealign.models.embeddings import CACHE_SUFFIX
from tests._tiny_run import TINY_WORLD
from tests.conftest import shared_file

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL_DP = [
    f"{model}.{key}"
    for model in ("reward_model", "cost_model")
    for key in ("privacy.accountant=rdp", "privacy.target_delta=1e-3")
] + ["budget.delta=1e-3"]


def _slice_hh(tmp_path: Path, n: int) -> Path:
    """The first ``n`` records of harmless-base, as a temporary file (never in the repo)."""
    source = shared_file("hh-rlhf-harmless-base/test.jsonl.gz")
    with gzip.open(source, "rt", encoding="utf-8") as handle:
        lines = [next(handle) for _ in range(n)]
    path = tmp_path / "harmless-slice.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(lines)
    return path


def _run(config: str, out: Path, overrides: list[str]) -> int:
    return main(["run", str(EXAMPLES / config), "--out", str(out), *overrides])


def _receipt(out: Path, kind: str) -> dict:
    return json.loads((out / kind / "receipt.json").read_text())


def test_every_example_has_a_test():
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == [
        "hh_rlhf_minilm.yaml",
        "llm_gpu.yaml",
        "lm_world.yaml",
        "synthetic.yaml",
    ]  # fmt: skip  (lm_world.yaml runs end to end in tests/run/test_lm_run.py)


@pytest.mark.integration
def test_hh_rlhf_minilm_example_runs_end_to_end(tmp_path, capsys):
    data = _slice_hh(tmp_path, 300)
    out = tmp_path / "hh"
    overrides = [f"data.source={data}", "reward_model.backbone=tiny", "cost_model.backbone=tiny",
                 "reward_model.train.epochs=2", "cost_model.train.epochs=2", *SMALL_DP]  # fmt: skip
    code = _run("hh_rlhf_minilm.yaml", out, overrides)
    assert code in (0, 1), capsys.readouterr().err  # 1: no solution found, still a signed report
    assert (out / "report.json").exists()
    for kind in ("cost", "reward"):
        receipt = _receipt(out, kind)
        assert receipt["private"] and receipt["epsilon"] <= 3.0 + 1e-6
        meta = json.loads((out / kind / "model" / "scalar_model.json").read_text())
        assert meta["frozen_backbone"] and meta["head"] == "linear"
        assert (meta["embed_text"], meta["normalize"]) == ("response", True)
    assert _receipt(out, "cost")["metrics"]["eval/ordered_pairs"] > 0  # chosen_is_safer worked
    shards = list((out / "embeddings").rglob(f"*{CACHE_SUFFIX}"))
    assert shards  # one cache for both models (same backbone identity)
    assert len({s.parent for s in shards}) == 1
    # The cache is private: never in the signed manifest (a hash of it would test guesses).
    report = json.loads((out / "report.json").read_text())
    listed = json.dumps(report)
    assert "embeddings/" not in listed and CACHE_SUFFIX not in listed


def test_hh_rlhf_example_without_chosen_is_safer_names_the_key(tmp_path, capsys):
    data = _slice_hh(tmp_path, 60)
    overrides = [f"data.source={data}", "data.chosen_is_safer=false", "reward_model.backbone=tiny",
                 "cost_model.backbone=tiny", *SMALL_DP]  # fmt: skip
    assert _run("hh_rlhf_minilm.yaml", tmp_path / "hh", overrides) == 2
    err = capsys.readouterr().err
    assert "data.chosen_is_safer: true" in err and "Traceback" not in err
    assert not (tmp_path / "hh" / "cost" / "receipt.json").exists()


@pytest.mark.integration
def test_llm_gpu_example_runs_end_to_end_with_a_tiny_decoder(tmp_path, capsys):
    """The GPU example's shape (decoder, last-token pooling, LoRA, generic JSONL, Clopper–Pearson
    on the unsafe rate) on CPU with a tiny GPT-2 built in code; a Qwen download is not possible
    offline, and its backbone is refused before any privacy is spent (below)."""
    rows = [
        {"prompt": f"question {i} about topic {i % 7}", "chosen": f"a careful answer {i}",
         "rejected": f"a reckless answer {i}", "chosen_safe": True, "rejected_safe": i % 3 != 0}
        for i in range(160)
    ]  # fmt: skip
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "llm"
    overrides = [f"data.source={data}", "audit.signing_key=null", "policy.num_candidates=2",
                 *[f"{m}.{k}" for m in ("reward_model", "cost_model")
                   for k in ("backbone=tiny-gpt2", "train.batch_size=32", "train.max_length=32")],
                 *SMALL_DP]  # fmt: skip
    code = _run("llm_gpu.yaml", out, overrides)
    assert code in (0, 1), capsys.readouterr().err
    assert (out / "report.json").exists()
    assert _receipt(out, "cost")["backbone"] == "tiny-gpt2"


def test_llm_gpu_example_refuses_an_unloadable_backbone_before_spending(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    overrides = [f"data.source={data}", "audit.signing_key=null",
                 "reward_model.backbone=/nonexistent/model", "cost_model.backbone=/nonexistent/model"]  # fmt: skip
    assert _run("llm_gpu.yaml", tmp_path / "llm", overrides) == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.integration
def test_synthetic_example_runs_end_to_end(tmp_path, capsys):
    # budget.ledger unset: the per-user ledger (conftest's SAFEALIGN_HOME). The report stage
    # used to crash here with exit 70 (Path(None)), after the models were charged.
    code = _run("synthetic.yaml", tmp_path / "syn", [*TINY_WORLD, "groups.mode=none"])
    assert code in (0, 1), capsys.readouterr().err
    assert (tmp_path / "syn" / "report.json").exists()
