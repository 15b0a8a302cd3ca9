"""Export as AutoModelForSequenceClassification: loadable by transformers alone, logits equal to
safealign's scores, refused (with the reason) where no exact equivalent exists."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from safealign.cli import main
from safealign.config import load_config
from safealign.errors import ConfigError
from safealign.models import export_sequence_classifier
from safealign.models.backbones import build_tiny_tokenizer
from safealign.models.hf_export import build_sequence_classifier
from safealign.models.scalar import build_scoring_model, load_scoring_model, save_scoring_model

# Uneven lengths, so the batch is padded, and words outside the tiny vocabulary ([UNK]).
PROMPTS = ["how do i bake bread", "tell me about the weather today please", "hi", "why"]
RESPONSES = [
    "you can bake it in an oven",
    "it is sunny",
    "hello there friend, how are you doing on this fine morning?",
    "because",
]


def _model(*overrides: str, kind: str = "cost", bias: float = 0.7):
    """A tiny-gpt2 scoring model with non-trivial LoRA weights and head bias (as after training)."""
    config = load_config(None, ["reward_model.backbone=tiny-gpt2", *overrides]).reward_model
    scoring = build_scoring_model(config, kind=kind, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in scoring.model.named_parameters():
            if "lora_B" in name:  # zero at init: make the merge matter
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
        scoring.model.head.bias.fill_(bias)
    return scoring


def _hf_scores(directory) -> torch.Tensor:
    model = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    batch = tokenizer(PROMPTS, RESPONSES, padding=True, truncation=True, return_tensors="pt")
    assert batch["attention_mask"].sum(1).unique().numel() > 1  # really padded
    with torch.no_grad():
        return model(**batch).logits[:, 0]


def test_lora_model_exports_with_logits_equal_to_its_scores(tmp_path):
    scoring = _model("reward_model.lora={r: 4}")
    save_scoring_model(scoring, tmp_path / "model")
    expected = load_scoring_model(tmp_path / "model").score(PROMPTS, RESPONSES)
    out = export_sequence_classifier(tmp_path / "model", tmp_path / "hf")
    got = _hf_scores(out)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # The in-memory model (a live peft wrapper) exports the same, and is left unmerged.
    export_sequence_classifier(scoring, tmp_path / "hf2")
    torch.testing.assert_close(_hf_scores(tmp_path / "hf2"), expected, rtol=1e-5, atol=1e-5)
    assert any("lora_B" in n for n, _ in scoring.model.named_parameters())
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"]
    assert (config["num_labels"] if "num_labels" in config else len(config["id2label"])) == 1
    assert config["id2label"] == {"0": "cost"} and config["pad_token_id"] == 0


def test_the_head_bias_is_carried_exactly(tmp_path):
    """The classifier's score layer has no bias: without the fold every logit would be off by b
    (and a cost model's sign, its unsafe verdict, would change)."""
    plain = _model("reward_model.lora=null", bias=0.0)
    shifted = _model("reward_model.lora=null", bias=2.5)
    a = build_sequence_classifier(plain)
    b = build_sequence_classifier(shifted)
    ids = torch.tensor([[5, 9, 11, 3]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        gap = (
            b(input_ids=ids, attention_mask=mask).logits
            - a(input_ids=ids, attention_mask=mask).logits
        )
    torch.testing.assert_close(gap, torch.tensor([[2.5]]), rtol=0, atol=1e-5)


def test_head_mode_linear_head_exports(tmp_path):
    scoring = _model("reward_model.lora=null", "reward_model.head={layers: linear}")
    assert scoring.model.frozen_backbone and scoring.model.pooling == "last"
    expected = scoring.score(PROMPTS, RESPONSES)  # through the embedding path of head mode
    out = export_sequence_classifier(scoring, tmp_path / "hf")
    torch.testing.assert_close(_hf_scores(out), expected, rtol=1e-5, atol=1e-5)


def test_the_export_holds_only_weights_a_public_tokenizer_and_a_card(tmp_path):
    out = export_sequence_classifier(_model(), tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip
    # The tokenizer is the one built in code from the world's templates, not learnt from data.
    assert AutoTokenizer.from_pretrained(str(out)).get_vocab() == build_tiny_tokenizer().get_vocab()
    card = (out / "README.md").read_text()
    assert "post-processing of a\ndifferentially private release" in card and "receipt.json" in card
    assert not list(tmp_path.glob(".hf.*"))  # no staging directory left behind


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (["reward_model.backbone=tiny"], "not a decoder"),
        (["reward_model.pooling=mean"], "pooling is 'mean'"),
        (["reward_model.lora=null", "reward_model.head={layers: mlp, hidden_size: 4}"], "MLP"),
        (["reward_model.lora=null", "reward_model.head={normalize: true}"], "head.normalize"),
        (["reward_model.lora=null", "reward_model.head={text: response}"], "head.text"),
    ],
)
def test_models_without_an_exact_equivalent_are_refused(tmp_path, overrides, reason):
    scoring = _model(*overrides)
    with pytest.raises(ConfigError, match=reason):
        export_sequence_classifier(scoring, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_cli_exports_and_plain_transformers_loads_it(tmp_path, capsys):
    save_scoring_model(_model("reward_model.lora={r: 4}", kind="reward"), tmp_path / "model")
    expected = load_scoring_model(tmp_path / "model").score(PROMPTS, RESPONSES)
    assert main(["export-hf", str(tmp_path / "model"), str(tmp_path / "hf")]) == 0
    assert "AutoModelForSequenceClassification" in capsys.readouterr().out
    probe = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        f"d = {str(tmp_path / 'hf')!r}\n"
        "m = AutoModelForSequenceClassification.from_pretrained(d).eval()\n"
        "t = AutoTokenizer.from_pretrained(d)\n"
        f"b = t({PROMPTS!r}, {RESPONSES!r}, padding=True, truncation=True, return_tensors='pt')\n"
        "with torch.no_grad(): s = m(**b).logits[:, 0].tolist()\n"
        "print(json.dumps({'scores': s, 'safealign': any(k.startswith('safealign') for k in sys.modules)}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["safealign"] is False
    torch.testing.assert_close(torch.tensor(result["scores"]), expected, rtol=1e-5, atol=1e-5)
    # A second export into the now non-empty directory, and a directory that is no model: exit 2.
    assert main(["export-hf", str(tmp_path / "model"), str(tmp_path / "hf")]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert main(["export-hf", str(tmp_path), str(tmp_path / "hf3")]) == 2
    assert "scalar_model.json is missing" in capsys.readouterr().err
