"""Export a decoder scoring model as a Hugging Face ``AutoModelForSequenceClassification``.

The exported directory loads with transformers alone (no safealign, no custom code)::

    model = AutoModelForSequenceClassification.from_pretrained(OUT)     # num_labels = 1
    tokenizer = AutoTokenizer.from_pretrained(OUT)
    batch = tokenizer(prompts, responses, padding=True, truncation=True, return_tensors="pt")
    scores = model(**batch).logits[:, 0]       # == safealign's score (float rounding)

It is exactly the safealign model, not an approximation, and :func:`export_sequence_classifier`
checks that numerically before it writes anything. That holds only where the two computations
coincide, so only this is exported:

- a decoder backbone with ``last`` pooling. Hugging Face's ``*ForSequenceClassification`` of a
  decoder reads the state of the last non-pad token (``config.pad_token_id``), which is what
  safealign's last-token pooling reads. Mean pooling (safealign's default for encoders such as
  MiniLM) has no such class: BERT's classifier reads a tanh pooler over [CLS], another function.
- a linear head (LoRA or full fine-tunes, and linear heads over a frozen backbone). An MLP head
  is not a one-label linear ``score`` layer, nor is a head on L2-normalised states
  (``head.normalize``); a frozen-backbone model that reads the response alone (``head.text:
  response``) is not called on (prompt, response) as the exported classifier is.
- a backbone whose final norm has an additive bias (GPT-2: ``ln_f``). The classifier's ``score``
  layer has no bias, and safealign's head has one (a cost model's zero means "unsafe" through
  it), so the bias ``b`` moves into the final norm: with head weight ``w``,
  ``ln_f.bias += b·w/‖w‖²`` adds exactly ``b`` to ``w·h`` and changes nothing else the classifier
  computes (only its last hidden state, should one ask for ``output_hidden_states``). Llama-style
  RMSNorm has no bias to carry ``b``.

The tokenizer is saved as the model uses it: pairs encoded as ``tokenizer(prompt, response)``,
padded on the right (a left-padded GPT-2 shifts the position ids), cut to the model's
``max_length`` by ``truncation=True`` (longest side first), and without ``token_type_ids``
(safealign never feeds them; GPT-2 would add them as embeddings). One case differs by
construction: a text whose last token *is* the pad token (GPT-2's pad is ``<|endoftext|>``), which
the classifier skips as padding.

Privacy: the export is a function of the released model only (DP post-processing of a model
trained with DP-SGD): weights, head, and a tokenizer that is public (built in code from templates
for the tiny backbones, or the pretrained one given; safealign never fits a tokenizer to data). No
training text, loss or count goes into the directory. The model card does not claim DP itself:
a model directory does not record how it was trained (its ``receipt.json`` does).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from safealign._atomic import atomic_directory, atomic_write_text
from safealign.errors import ConfigError
from safealign.models.backbones import model_type
from safealign.models.features import FeatureBackbone
from safealign.models.heads import MLPHead
from safealign.models.paired import is_causal
from safealign.models.scalar import ScoringModel, load_scoring_model

# model_type -> the final norm (inside the base model) whose additive bias carries the head's bias.
FINAL_NORM_WITH_BIAS = {"gpt2": "ln_f"}


def export_problems(scoring: ScoringModel) -> list[str]:
    """Why ``scoring`` has no exactly equivalent ``AutoModelForSequenceClassification`` (empty:
    it has one). See the module docstring for each rule."""
    model = scoring.model
    if isinstance(model.backbone, FeatureBackbone):
        return [
            "a 'features' model scores the synthetic world's parsed features, not tokens: it has "
            "no Hugging Face equivalent (use it through safealign)"
        ]
    problems = []
    backbone = model.backbone
    if hasattr(backbone, "get_base_model"):  # peft: inspect, never merge, the live model
        backbone = backbone.get_base_model()
    kind = model_type(backbone)
    if not is_causal(backbone):
        problems.append(
            f"backbone type {kind!r} is not a decoder: Hugging Face's sequence classifiers of "
            "encoders read a tanh pooler over the first token, not safealign's pooled state"
        )
    if model.pooling != "last":
        problems.append(
            f"pooling is {model.pooling!r}: only last-token pooling equals a Hugging Face sequence "
            "classifier (which reads the last non-pad token)"
        )
    if isinstance(model.head, MLPHead) or not isinstance(model.head, nn.Linear):
        problems.append(
            "the head is an MLP: a sequence classifier ends in one linear 'score' layer"
        )
    elif kind not in FINAL_NORM_WITH_BIAS and is_causal(backbone):
        problems.append(
            f"backbone type {kind!r}: its sequence classifier's 'score' layer has no bias and its "
            "final norm none to carry the head's bias exactly (exportable types: "
            f"{', '.join(sorted(FINAL_NORM_WITH_BIAS))})"
        )
    elif float(model.head.weight.detach().abs().max()) == 0.0:
        problems.append(
            "the head's weight is zero: the score is a constant, there is nothing to export"
        )
    if model.normalize:
        problems.append(
            "the head reads L2-normalised states (head.normalize: true), which a sequence "
            "classifier's linear 'score' layer cannot compute; train with head.normalize: false"
        )
    if scoring.embed_text != "prompt_response":
        problems.append(
            f"the model reads the response alone (head.text: {scoring.embed_text}), but the "
            "exported classifier is called on (prompt, response); train with "
            "head.text: prompt_response"
        )
    if getattr(scoring.tokenizer, "pad_token_id", None) is None:
        problems.append(
            "the tokenizer has no pad token, which the classifier needs to find the last token"
        )
    return problems


def export_sequence_classifier(model: ScoringModel | str | Path, out: str | Path) -> Path:
    """Write ``model`` (a :class:`ScoringModel` or a model directory) to ``out`` as a
    one-label ``AutoModelForSequenceClassification`` with its tokenizer and a model card.

    Returns:
        ``out``, written whole or not at all (a temp directory renamed into place).

    Raises:
        DataError: ``model`` is a path that is not a safealign model directory.
        ConfigError: the model has no exact equivalent (every reason listed), ``out`` exists and
            is not empty, or the built classifier's scores differ from the model's.
    """
    source = str(model) if isinstance(model, str | Path) else None
    scoring = load_scoring_model(model) if source is not None else model
    problems = export_problems(scoring)
    if problems:
        raise ConfigError(
            [f"cannot export as AutoModelForSequenceClassification: {p}" for p in problems],
            source=source,
        )
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty directory; choose a new output path")
    classifier = build_sequence_classifier(scoring)
    check_equivalent(scoring, classifier)
    tokenizer = _export_tokenizer(scoring)
    with atomic_directory(out) as staging:  # ``out`` is absent or an empty directory
        classifier.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        atomic_write_text(staging / "README.md", _model_card(scoring))
    return out


def build_sequence_classifier(scoring: ScoringModel) -> nn.Module:
    """The ``*ForSequenceClassification`` (``num_labels = 1``, eval mode, CPU) equal to
    ``scoring``: its backbone (LoRA merged), the head's weight as ``score``, and the head's bias
    folded into the final norm's bias (module docstring). Call :func:`export_problems` first."""
    backbone = _base(copy.deepcopy(scoring.model.backbone).cpu())
    head = scoring.model.head
    config = copy.deepcopy(backbone.config)
    config.num_labels = 1
    config.id2label, config.label2id = {0: scoring.kind}, {scoring.kind: 0}
    config.pad_token_id = scoring.tokenizer.pad_token_id
    config.problem_type = "regression"
    dtype = next(p.dtype for p in backbone.parameters() if p.is_floating_point())
    classifier = AutoModelForSequenceClassification.from_config(config).to(dtype)
    base = getattr(classifier, classifier.base_model_prefix)
    base.load_state_dict(backbone.state_dict())  # strict: every weight, nothing else
    weight = head.weight.detach().cpu().double()  # [1, H]
    bias = float(head.bias.detach()) if head.bias is not None else 0.0
    norm = base.get_submodule(FINAL_NORM_WITH_BIAS[model_type(backbone)])
    with torch.no_grad():
        classifier.score.weight.copy_(weight.to(dtype))
        # w·(h + b·w/‖w‖²) = w·h + b: the head's bias, carried by every last hidden state.
        norm.bias.add_((bias * weight[0] / (weight[0] @ weight[0])).to(norm.bias.dtype))
    return classifier.eval()


@torch.no_grad()
def check_equivalent(scoring: ScoringModel, classifier: nn.Module, *, seed: int = 0) -> float:
    """The largest gap between ``classifier``'s logits and ``scoring``'s scores on random (public)
    token ids with uneven right padding; raise if it exceeds float rounding.

    Raises:
        ConfigError: the gap is larger than ``1e-4`` (float32; ``2e-2`` in half precision) times
            the scores' scale.
    """
    model = copy.deepcopy(scoring.model).cpu().eval()
    pad = scoring.tokenizer.pad_token_id
    vocab = classifier.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab - 1, (4, 12), generator=generator)
    ids = ids + (ids >= pad).long()  # never the pad id inside a text
    mask = (torch.arange(12) < torch.tensor([[12], [7], [3], [1]])).long()
    ids = ids.masked_fill(mask == 0, pad)
    reference = model(ids, mask).double()
    logits = classifier(input_ids=ids, attention_mask=mask).logits[:, 0].double()
    gap = float((logits - reference).abs().max())
    dtype = next(p.dtype for p in classifier.parameters() if p.is_floating_point())
    tolerance = (1e-4 if dtype == torch.float32 else 2e-2) * max(1.0, float(reference.abs().max()))
    if not gap <= tolerance:
        raise ConfigError(
            f"the exported classifier's logits differ from the model's scores by {gap:.3g} > "
            f"{tolerance:.3g} on probe inputs; nothing was written (please report)"
        )
    return gap


def _base(backbone: nn.Module) -> nn.Module:
    """The plain Hugging Face model under a peft wrapper, LoRA merged into its weights (in place:
    pass a copy)."""
    if hasattr(backbone, "merge_and_unload"):
        return backbone.merge_and_unload()
    return backbone


def _export_tokenizer(scoring: ScoringModel):
    tokenizer = copy.deepcopy(scoring.tokenizer)
    tokenizer.padding_side = "right"  # GPT-2's positions count from the left edge
    tokenizer.model_max_length = scoring.max_length  # truncation=True cuts where safealign does
    tokenizer.model_input_names = ["input_ids", "attention_mask"]  # no token_type_ids
    return tokenizer


def _model_card(scoring: ScoringModel) -> str:
    from safealign._version import __version__

    meaning = (
        "higher is better (Bradley-Terry reward)"
        if scoring.kind == "reward"
        else "cost > 0 means unsafe (Safe RLHF convention)"
    )
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [safealign, {scoring.kind}-model]
---
# safealign {scoring.kind} model

A {scoring.kind} model trained by safealign {__version__}, exported as a one-label
`AutoModelForSequenceClassification`; its logit is safealign's score: {meaning}.

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained(PATH).eval()
tokenizer = AutoTokenizer.from_pretrained(PATH)
batch = tokenizer(prompts, responses, padding=True, truncation=True, return_tensors="pt")
scores = model(**batch).logits[:, 0]
```

Encode (prompt, response) as a pair, padded on the right (the saved default), truncated to
{scoring.max_length} tokens. The head's bias is folded into the final norm's bias, so the last
hidden state differs from the backbone's; the logit is exact.

Privacy: the export is a function of the trained model alone. If that model was trained with
DP-SGD (its privacy receipt, `receipt.json` beside the source model directory, and the run's
signed report say so, with epsilon and delta), these weights are post-processing of a
differentially private release: they carry its guarantee and cost no further privacy budget.
The directory holds no training text.
"""
