"""The released language-model policy as Hugging Face artefacts: a base model directory, a PEFT
adapter directory beside its ``generation_config.json``, and :class:`LMPolicy`, their identity;
or a base model deployed with a best-of-K resampler, :class:`LMBestOfKPolicy` (base, sampler,
K, tilt and the scoring models, each named by content).

A safety certificate is about one distribution: the base weights, the adapter weights and the
sampler settings together. :class:`LMPolicy` names all three by content (SHA-256 of the files),
and its :meth:`LMPolicy.sampler_settings` is what certificates and the certification log record,
so a changed byte of either model, or another temperature, is another policy.

The adapter directory follows HF conventions, loadable without safealign::

    base = AutoModelForCausalLM.from_pretrained(BASE_DIR)
    model = PeftModel.from_pretrained(base, "OUT/policy")
    settings = GenerationConfig.from_pretrained("OUT/policy")   # exactly the certified sampler

Its ``generation_config.json`` sets every other distribution-shaping knob to neutral
(``top_k=0``, ``repetition_penalty=1``, ...), as :func:`causal.generate` samples; a file that
changes one of them describes a distribution the certificate does not cover, and is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from safealign._atomic import atomic_directory
from safealign.errors import ConfigError, DataError
from safealign.models.causal import SamplerSettings, load_causal_lm

POLICY_KIND = "causal_lm_adapter"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
GENERATION_FILE = "generation_config.json"
# Knobs HF applies on top of temperature / top-p; neutral values leave the certified distribution.
_NEUTRAL = {
    "top_k": (0, None),
    "typical_p": (1.0, None),
    "min_p": (None, 0.0),
    "repetition_penalty": (1.0, None),
    "no_repeat_ngram_size": (0, None),
    "num_beams": (1, None),
    "epsilon_cutoff": (0.0, None),
    "eta_cutoff": (0.0, None),
}


def tree_sha256(directory: str | Path, names: tuple[str, ...] | None = None) -> str:
    """SHA-256 over ``(relative path, SHA-256 of the bytes)`` of the files of ``directory``
    (``names`` only, when given), in sorted order: a changed, added or removed file changes it."""
    root = Path(directory)
    files = (
        sorted(p for p in root.rglob("*") if p.is_file())
        if names is None
        else [root / n for n in names]
    )
    outer = hashlib.sha256()
    for path in files:
        if not path.is_file():
            raise DataError("is missing: the model directory is incomplete", path=str(path))
        inner = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                inner.update(block)
        outer.update(f"{path.relative_to(root).as_posix()}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


@dataclass(frozen=True)
class LMPolicy:
    """A causal-LM policy as deployed: base + LoRA adapter + sampler, each named by content.

    Attributes:
        base_model: What the base is (``tiny-gpt2``, ``world-sft`` or the directory given).
        base_dir: Its directory, relative to the run directory when inside it.
        base_sha256: :func:`tree_sha256` of the base directory.
        adapter_dir: The PEFT adapter directory, relative to the run directory.
        adapter_sha256: :func:`tree_sha256` of :data:`ADAPTER_FILES` in it.
        sampler: The deployment sampler (also the adapter directory's ``generation_config.json``).
        seed: Seed of the safety test's sampling (one response per safety prompt).
    """

    base_model: str
    base_dir: str
    base_sha256: str
    adapter_dir: str
    adapter_sha256: str
    sampler: SamplerSettings
    seed: int

    def sampler_settings(self) -> dict[str, Any]:
        """The exact deployed distribution, as plain data (recorded in certificates)."""
        return {
            "policy": POLICY_KIND,
            "base_model": {
                "name": self.base_model,
                "dir": self.base_dir,
                "sha256": self.base_sha256,
            },
            "adapter": {"dir": self.adapter_dir, "sha256": self.adapter_sha256},
            "generation": self.sampler.to_dict(),
            "num_samples": 1,
            "seed": self.seed,
        }

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> LMPolicy:
        """Read back :meth:`sampler_settings` (as ``policy.json`` stores it).

        Raises:
            ConfigError: a field is missing or malformed (listing every problem).
        """
        try:
            base, adapter = dict(settings["base_model"]), dict(settings["adapter"])
            gen = dict(settings["generation"])
            policy = cls(
                base_model=str(base["name"]),
                base_dir=str(base["dir"]),
                base_sha256=str(base["sha256"]),
                adapter_dir=str(adapter["dir"]),
                adapter_sha256=str(adapter["sha256"]),
                sampler=SamplerSettings(
                    int(gen["max_new_tokens"]), float(gen["temperature"]), float(gen["top_p"])
                ),
                seed=int(settings["seed"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a causal-LM policy description ({exc!r})") from None
        if settings.get("policy") != POLICY_KIND:
            raise ConfigError(f"policy is {settings.get('policy')!r}, expected {POLICY_KIND!r}")
        return policy


#: A base LM deployed with a best-of-K resampler (``policy.method: best_of_k`` with a model).
BEST_OF_K_KIND = "causal_lm_best_of_k"


@dataclass(frozen=True)
class LMBestOfKPolicy:
    """A causal LM deployed with HC-RLHF's best-of-K resampler, each part named by content.

    For a prompt, the base LM draws ``num_candidates`` responses with ``sampler``; the scoring
    models (the run's DP cost and reward or group reward models, each named by its directory's
    :func:`tree_sha256`) score them, and one is drawn with probability
    ``∝ exp((r - lambda * metric(c)) / beta)`` (uniform reference weights: the candidates are the
    LM's own samples), where ``r = Σ_g w_g r_g`` with ``group_weights`` when groups are on.
    Another K, seed, tilt or scoring model is another policy.

    Attributes:
        base_model: What the base is (``tiny-gpt2``, ``world-sft`` or the directory given).
        base_dir: Its directory, relative to the run directory when inside it.
        base_sha256: :func:`tree_sha256` of the base directory.
        sampler: The base LM's deployment sampler (``policy/generation_config.json`` holds it).
        num_candidates: ``K``, LM samples per prompt.
        beta: The tilt's KL coefficient.
        lambda_: The tilt's cost multiplier.
        metric: What the tilt penalises (``safety.metric``).
        scoring_models: ``(role, directory, sha256)`` per scoring model, roles ``cost``,
            ``reward`` or ``group:<name>``, directories relative to the run directory.
        group_weights: The MaxMin weights ``(group, w)`` (empty without groups).
        seed: Seed of the safety test's K samples per prompt.
        resample_seed: Seed of the safety test's resampling draw.
    """

    base_model: str
    base_dir: str
    base_sha256: str
    sampler: SamplerSettings
    num_candidates: int
    beta: float
    lambda_: float
    metric: str
    scoring_models: tuple[tuple[str, str, str], ...]
    group_weights: tuple[tuple[str, float], ...]
    seed: int
    resample_seed: int

    def sampler_settings(self) -> dict[str, Any]:
        """The exact deployed distribution, as plain data (recorded in certificates)."""
        return {
            "policy": BEST_OF_K_KIND,
            "weights": "exp((r - lambda * c) / beta) over K samples of the base LM",
            "base_model": {
                "name": self.base_model,
                "dir": self.base_dir,
                "sha256": self.base_sha256,
            },
            "generation": self.sampler.to_dict(),
            "num_candidates": self.num_candidates,
            "beta": self.beta,
            "lambda": self.lambda_,
            "metric": self.metric,
            "scoring_models": {
                role: {"dir": where, "sha256": sha} for role, where, sha in self.scoring_models
            },
            "group_weights": dict(self.group_weights) or None,
            "seed": self.seed,
            "resample_seed": self.resample_seed,
        }

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> LMBestOfKPolicy:
        """Read back :meth:`sampler_settings` (as ``policy.json`` stores it).

        Raises:
            ConfigError: a field is missing or malformed.
        """
        if settings.get("policy") != BEST_OF_K_KIND:
            raise ConfigError(f"policy is {settings.get('policy')!r}, expected {BEST_OF_K_KIND!r}")
        try:
            base, gen = dict(settings["base_model"]), dict(settings["generation"])
            models = dict(settings["scoring_models"])
            weights = settings["group_weights"] or {}
            policy = cls(
                base_model=str(base["name"]),
                base_dir=str(base["dir"]),
                base_sha256=str(base["sha256"]),
                sampler=SamplerSettings(
                    int(gen["max_new_tokens"]), float(gen["temperature"]), float(gen["top_p"])
                ),
                num_candidates=_integer(settings["num_candidates"], "num_candidates"),
                beta=float(settings["beta"]),
                lambda_=float(settings["lambda"]),
                metric=str(settings["metric"]),
                scoring_models=tuple(
                    (str(role), str(m["dir"]), str(m["sha256"])) for role, m in models.items()
                ),
                group_weights=tuple((str(g), float(w)) for g, w in dict(weights).items()),
                seed=_integer(settings["seed"], "seed"),
                resample_seed=_integer(settings["resample_seed"], "resample_seed"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"not a best-of-K LM policy description ({exc!r})") from None
        if "cost" not in dict((r, d) for r, d, _ in policy.scoring_models):
            raise ConfigError("scoring_models: the cost model is missing")
        return policy


def _integer(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer (got {value!r})")
    return value


def generation_config(
    sampler: SamplerSettings, tokenizer: PreTrainedTokenizerBase
) -> GenerationConfig:
    """The HF ``GenerationConfig`` of ``sampler``: its settings, every other knob neutral."""
    greedy = sampler.temperature == 0
    sampling = {} if greedy else {"temperature": sampler.temperature, "top_p": sampler.top_p}
    return GenerationConfig(
        do_sample=not greedy,
        max_new_tokens=sampler.max_new_tokens,
        top_k=0,
        typical_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        num_beams=1,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=getattr(tokenizer, "bos_token_id", None),
        **sampling,
    )


def read_sampler_settings(directory: str | Path) -> SamplerSettings:
    """The sampler a policy directory's ``generation_config.json`` describes.

    Raises:
        DataError: the file is missing, not JSON, or sets a knob that changes the distribution
            away from what :class:`SamplerSettings` describes (naming the file and the field).
    """
    path = Path(directory) / GENERATION_FILE
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("no such file: not a safealign policy directory", path=str(path)) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read it as JSON ({exc})", path=str(path)) from None
    if not isinstance(obj, dict):
        raise DataError("expected a JSON object", path=str(path))
    for name, neutral in _NEUTRAL.items():
        if name in obj and obj[name] not in neutral:
            raise DataError(
                f"field {name!r} is {obj[name]!r}; the certified sampler uses only temperature, "
                f"top_p and max_new_tokens ({name} must be {neutral[0]!r})",
                path=str(path),
                field=name,
            )
    try:
        sampled = obj.get("do_sample", False)
        if not isinstance(sampled, bool):
            raise ValueError(f"do_sample must be true or false (got {sampled!r})")
        temperature = float(obj.get("temperature", 1.0)) if sampled else 0.0
        top_p = float(obj.get("top_p", 1.0)) if sampled else 1.0
        tokens = obj.get("max_new_tokens")
        if not isinstance(tokens, int) or isinstance(tokens, bool):
            raise ValueError(f"max_new_tokens must be an integer (got {tokens!r})")
        if not math.isfinite(temperature):
            raise ValueError(f"temperature must be finite (got {temperature!r})")
        return SamplerSettings(tokens, temperature, top_p)
    except (TypeError, ValueError) as exc:
        raise DataError(str(exc), path=str(path)) from None
    except ConfigError as exc:
        raise DataError("; ".join(exc.problems), path=str(path)) from None


def save_model_dir(model: nn.Module, tokenizer: PreTrainedTokenizerBase, directory: Path) -> Path:
    """``save_pretrained`` of ``model`` and ``tokenizer`` into ``directory``, all or nothing: they
    are written into a temp directory beside it, which is then renamed into place."""
    with atomic_directory(directory) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return directory


def save_policy_artifact(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    sampler: SamplerSettings,
    directory: Path,
    *,
    base_name_or_path: str,
) -> str:
    """Write the PEFT adapter, the tokenizer and ``generation_config.json`` into ``directory``.

    Returns:
        The adapter's :func:`tree_sha256` (over :data:`ADAPTER_FILES`).
    """
    model.peft_config["default"].base_model_name_or_path = base_name_or_path
    with atomic_directory(directory) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        generation_config(sampler, tokenizer).save_pretrained(staging)
    return tree_sha256(directory, ADAPTER_FILES)


def save_generation_dir(
    sampler: SamplerSettings, tokenizer: PreTrainedTokenizerBase, directory: Path
) -> Path:
    """Write ``generation_config.json`` (and the tokenizer) of a best-of-K base LM's certified
    sampler into ``directory``, all or nothing."""
    with atomic_directory(directory) as staging:
        tokenizer.save_pretrained(staging)
        generation_config(sampler, tokenizer).save_pretrained(staging)
    return directory


def load_policy_model(
    base_dir: str | Path, adapter_dir: str | Path, *, seed: int = 0
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Base + adapter, ready to sample (``PeftModel.from_pretrained``, eval mode).

    Raises:
        DataError: either directory is missing or cannot be loaded (naming it).
    """
    from peft import PeftModel

    for where in (base_dir, adapter_dir):
        if not Path(where).is_dir():
            raise DataError(
                "no such directory: the policy's model files are missing", path=str(where)
            )
    try:
        base, tokenizer = load_causal_lm(str(base_dir), seed=seed)
    except ConfigError as exc:
        raise DataError("; ".join(exc.problems), path=str(base_dir)) from None
    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise DataError(
            f"cannot load the PEFT adapter ({exc.__class__.__name__}: {str(exc)[:200]})",
            path=str(adapter_dir),
        ) from None
    return model.eval(), tokenizer
