"""``policy.json``: the aligned policy of a run directory, between ``align`` and ``certify``.

``safealign align`` writes it; ``safealign certify`` (without ``--responses``) reads it back and
runs HC-RLHF's safety test on exactly that policy. It holds:

- ``policy``: the selected policy's ``sampler_settings()`` (the deployment settings the
  certificate will cover: a tilted best-of-K resampler, a causal LM's base, adapter and sampler,
  or a base LM with a best-of-K resampler and its scoring models, each named by SHA-256), or
  ``null`` when no policy met the pessimistic bound (``reason`` says why);
- ``selection``: HC-RLHF step 1's numbers (lambda, the pessimistic bound, k, n_b, n_s, ...);
- ``groups``: the MaxMin dual weights, each group's expected (normalised) reward and, with
  ``groups.normalize: regret``, each group's own cost multiplier λ_g (``cost_lambdas``: its
  constrained optimum, the zero of its regret in the report and the certificate), if any;
- ``models``: the cost and reward model directories used, relative to the run directory;
- ``candidates``: where the candidates came from (the reference sampler, or a file and its SHA-256);
- ``data`` and ``safety``: the dataset and split fingerprints and the safety section the policy was
  selected for, so certification can refuse a run directory that does not match its config.

``kind`` and ``version`` identify the file; :func:`load_policy_file` raises :class:`DataError`
naming the file and the field on any bad content.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safealign._atomic import atomic_write_text
from safealign.constraints.align import AlignResult
from safealign.constraints.tilting import POLICY_KIND, TiltedPolicy, cost_range_mismatch
from safealign.data.io import parse_json
from safealign.errors import ConfigError, DataError
from safealign.models.policy_artifact import BEST_OF_K_KIND, LMBestOfKPolicy, LMPolicy
from safealign.models.policy_artifact import POLICY_KIND as LM_POLICY_KIND

FILE_KIND, FILE_VERSION = "safealign.aligned_policy", 1
FROM_REFERENCE, FROM_FILE = "reference_sampler", "file"
#: Candidates drawn from the policy LM itself, each round (``policy.method: distill``).
FROM_POLICY_LM = "policy_lm"

_SELECTION_FIELDS = (
    "method",
    "metric",
    "feasible",
    "lambda",
    "pessimism_k",
    "selection_bound",
    "cost_threshold",
    "mean_cost",
    "std_cost",
    "expected_reward",
    "n_opt",
    "n_safety",
    "requires_safety_test",
)


@dataclass(frozen=True)
class ModelDirs:
    """Model directories, relative to the run directory.

    Attributes:
        cost: The cost model.
        reward: The reward model (None with groups).
        group_rewards: ``(group name, directory)`` per group, in scoring order (None without groups).
    """

    cost: str
    reward: str | None = None
    group_rewards: tuple[tuple[str, str], ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        groups = self.group_rewards
        return {
            "cost": self.cost,
            "reward": self.reward,
            "group_rewards": None
            if groups is None
            else [{"name": name, "model": model} for name, model in groups],
        }


@dataclass(frozen=True)
class PolicyFile:
    """The content of ``policy.json`` (see the module docstring for each part)."""

    policy: TiltedPolicy | LMPolicy | LMBestOfKPolicy | None
    reason: str
    selection: dict[str, Any]
    safety: dict[str, Any]
    group_weights: dict[str, float] | None
    group_rewards: dict[str, float] | None
    models: ModelDirs
    candidates: dict[str, Any]
    data: dict[str, Any]
    group_cost_lambdas: dict[str, float] | None = None

    @property
    def from_candidates_file(self) -> bool:
        """True when the policy was aligned on a user's candidates file (not our sampler)."""
        return self.candidates.get("source") == FROM_FILE

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data, ``kind`` and ``version`` first in meaning (keys are sorted on disk)."""
        groups = None
        if self.group_weights is not None:
            groups = {"weights": self.group_weights, "rewards": self.group_rewards}
            if self.group_cost_lambdas is not None:
                groups["cost_lambdas"] = self.group_cost_lambdas
        return {
            "kind": FILE_KIND,
            "version": FILE_VERSION,
            "policy": None if self.policy is None else self.policy.sampler_settings(),
            "reason": self.reason,
            "selection": self.selection,
            "safety": self.safety,
            "groups": groups,
            "models": self.models.to_dict(),
            "candidates": self.candidates,
            "data": self.data,
        }


def policy_file_from(
    aligned: AlignResult,
    *,
    safety: Mapping[str, Any],
    models: ModelDirs,
    candidates: Mapping[str, Any],
    data: Mapping[str, Any],
) -> PolicyFile:
    """The ``policy.json`` content of an alignment result.

    Args:
        aligned: What :func:`safealign.constraints.align.optimize_policy` returned.
        safety: The safety config section the policy was selected for (plain data).
        models: The model directories used, relative to the run directory.
        candidates: Where the candidates came from (``{"source": "reference_sampler", ...}`` or
            ``{"source": "file", "path": ..., "sha256": ...}``).
        data: Dataset and split fingerprints and ``n_safety``.
    """
    s = aligned.selection
    numbers = {
        "method": s.method,
        "metric": s.metric,
        "feasible": s.feasible,
        "lambda": s.lambda_,
        "pessimism_k": s.pessimism_k,
        "selection_bound": s.selection_bound,
        "cost_threshold": safety["cost_threshold"],
        "mean_cost": s.mean_cost,
        "std_cost": s.std_cost,
        "expected_reward": s.expected_reward,
        "n_opt": s.n_opt,
        "n_safety": s.n_safety,
        "requires_safety_test": s.requires_safety_test,
    }
    # NaN (e.g. the expected reward of an infeasible selection) is not JSON: write null.
    numbers = {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in numbers.items()
    }
    return PolicyFile(
        policy=s.policy,
        reason=s.reason,
        selection=numbers,
        safety=_plain(safety),
        group_weights=aligned.group_weights,
        group_rewards=aligned.group_rewards,
        models=models,
        candidates=_plain(candidates),
        data=_plain(data),
        group_cost_lambdas=_plain_or_none(aligned.scorers.group_cost_lambdas),
    )


def write_policy_file(policy_file: PolicyFile, path: str | Path) -> Path:
    """Write ``policy_file`` as sorted, indented JSON, atomically."""
    text = json.dumps(policy_file.to_dict(), indent=2, sort_keys=True, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def load_policy_file(path: str | Path) -> PolicyFile:
    """Read a ``policy.json`` written by :func:`write_policy_file`.

    Raises:
        DataError: the file is missing, not JSON, or a field is missing or malformed (naming the
            file and the field).
    """
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("no such file", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the policy file ({exc})", path=path) from None
    # The data readers' strict JSON: duplicate keys, NaN, huge numbers, deep nesting and lone
    # surrogates are refused with the file named, never a crash.
    obj = parse_json(text, path=path)
    read = _Reader(path)
    if not isinstance(obj, dict):
        raise read.bad("", f"expected a JSON object, got {type(obj).__name__}")
    if obj.get("kind") != FILE_KIND:
        raise read.bad("kind", f"is {obj.get('kind')!r}, expected {FILE_KIND!r}: not a policy file")
    if obj.get("version") != FILE_VERSION:
        raise read.bad(
            "version", f"is {obj.get('version')!r}; this safealign reads version {FILE_VERSION}"
        )
    selection = read.get(obj, "selection", dict)
    for name in _SELECTION_FIELDS:
        read.get(selection, name, object, where="selection")
    groups = read.get(obj, "groups", dict, optional=True)
    weights = rewards = lambdas = None
    if groups is not None:
        weights = _numbers(
            read, read.get(groups, "weights", dict, where="groups"), "groups.weights"
        )
        raw = read.get(groups, "rewards", dict, where="groups", optional=True)
        rewards = None if raw is None else _numbers(read, raw, "groups.rewards")
        # Absent in files written before λ_g were recorded: their regret is then the plain one.
        raw = groups.get("cost_lambdas")
        lambdas = None if raw is None else _lambdas(read, raw, weights)
    return PolicyFile(
        policy=_policy(read, obj),
        reason=read.get(obj, "reason", str),
        selection=selection,
        safety=read.get(obj, "safety", dict),
        group_weights=weights,
        group_rewards=rewards,
        models=_models(read, read.get(obj, "models", dict), group_names=weights),
        candidates=_candidates(read, read.get(obj, "candidates", dict)),
        data=_data(read, read.get(obj, "data", dict)),
        group_cost_lambdas=lambdas,
    )


# --- internals ------------------------------------------------------------------------------


class _Reader:
    """Typed field access that names the file and the dotted field on failure."""

    def __init__(self, path: str) -> None:
        self.path = path

    def bad(self, field: str, why: str) -> DataError:
        message = f"field {field!r} {why}" if field else why
        return DataError(message, path=self.path, field=field or None)

    def get(self, obj: dict, name: str, kind: type, *, where: str = "", optional: bool = False):
        field = f"{where}.{name}" if where else name
        if name not in obj:
            raise self.bad(field, "is missing")
        value = obj[name]
        if value is None and optional:
            return None
        if kind is not object and not isinstance(value, kind):
            raise self.bad(field, f"must be a JSON {_JSON_NAMES[kind]} (got {value!r})")
        return value


_JSON_NAMES = {dict: "object", str: "string", list: "array", int: "integer"}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(read: _Reader, obj: dict, field: str) -> dict[str, float]:
    for name, value in obj.items():
        if not _number(value):
            raise read.bad(f"{field}.{name}", f"must be a finite number (got {value!r})")
    return {name: float(value) for name, value in obj.items()}


def _lambdas(read: _Reader, raw: object, weights: dict[str, float]) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise read.bad("groups.cost_lambdas", f"must be a JSON object (got {raw!r})")
    lambdas = _numbers(read, raw, "groups.cost_lambdas")
    if sorted(lambdas) != sorted(weights) or any(v < 0 for v in lambdas.values()):
        raise read.bad("groups.cost_lambdas", "must give each group of groups.weights a λ >= 0")
    return lambdas


def _plain_or_none(value: Mapping[str, float] | None) -> dict[str, float] | None:
    return None if value is None else {k: float(v) for k, v in value.items()}


def _policy(read: _Reader, obj: dict) -> TiltedPolicy | LMPolicy | LMBestOfKPolicy | None:
    settings = read.get(obj, "policy", dict, optional=True)
    if settings is None:
        return None
    lm_kinds = {LM_POLICY_KIND: LMPolicy, BEST_OF_K_KIND: LMBestOfKPolicy}
    if settings.get("policy") in lm_kinds:
        try:
            return lm_kinds[settings["policy"]].from_settings(settings)
        except ConfigError as exc:
            raise read.bad("policy", "; ".join(exc.problems)) from None
    if settings.get("policy") != POLICY_KIND:
        raise read.bad("policy.policy", f"is {settings.get('policy')!r}, expected {POLICY_KIND!r}")
    for name in ("beta", "lambda", "num_candidates", "metric", "reference_sampler", "seed"):
        read.get(settings, name, object, where="policy")
    try:
        policy = TiltedPolicy(
            beta=settings["beta"],
            lambda_=settings["lambda"],
            num_candidates=settings["num_candidates"],
            metric=settings["metric"],
            reference_sampler=read.get(settings, "reference_sampler", dict, where="policy"),
            seed=settings["seed"],
            cost_range=settings.get("cost_range"),
        )
    except ConfigError as exc:
        raise read.bad(
            "policy", f"is not a valid tilted policy: {'; '.join(exc.problems)}"
        ) from None
    problem = cost_range_mismatch(policy, obj.get("safety"))
    if problem:
        raise read.bad("policy.cost_range", problem)
    return policy


def _models(read: _Reader, obj: dict, *, group_names) -> ModelDirs:
    cost = read.get(obj, "cost", str, where="models")
    if group_names is None:
        return ModelDirs(cost=cost, reward=read.get(obj, "reward", str, where="models"))
    entries = read.get(obj, "group_rewards", list, where="models")
    pairs = []
    for i, entry in enumerate(entries):
        where = f"models.group_rewards[{i}]"
        if not isinstance(entry, dict):
            raise read.bad(where, f"must be a JSON object (got {entry!r})")
        pairs.append(
            (read.get(entry, "name", str, where=where), read.get(entry, "model", str, where=where))
        )
    if sorted(name for name, _ in pairs) != sorted(group_names):
        raise read.bad(
            "models.group_rewards",
            f"must list one model per group of groups.weights ({', '.join(sorted(group_names))})",
        )
    return ModelDirs(cost=cost, group_rewards=tuple(pairs))


def _candidates(read: _Reader, obj: dict) -> dict:
    source = read.get(obj, "source", str, where="candidates")
    if source == FROM_FILE:
        read.get(obj, "path", str, where="candidates")
        read.get(obj, "sha256", str, where="candidates")
    elif source in (FROM_REFERENCE, FROM_POLICY_LM):
        read.get(obj, "reference_sampler", dict, where="candidates")
    else:
        raise read.bad(
            "candidates.source",
            f"is {source!r}, expected {FROM_REFERENCE!r}, {FROM_POLICY_LM!r} or {FROM_FILE!r}",
        )
    return obj


def _data(read: _Reader, obj: dict) -> dict:
    read.get(obj, "dataset_fingerprint", str, where="data")
    splits = read.get(obj, "split_fingerprints", dict, where="data")
    read.get(splits, "safety", str, where="data.split_fingerprints")
    read.get(obj, "n_safety", int, where="data")
    return obj


def _plain(value: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(value), allow_nan=False, sort_keys=True))


def check_policy_file_matches(
    policy_file: PolicyFile,
    path: str | Path,
    *,
    safety: Mapping[str, Any],
    data: Mapping[str, Any],
    reference_sampler: Mapping[str, Any],
) -> None:
    """Refuse to certify a policy under a configuration other than the one it was aligned with.

    The step-1 bound anticipated this safety test (its threshold, confidence, pessimism and n_s),
    and the certificate is about *this* policy deployed with *this* reference sampler on *these*
    sealed safety prompts; any mismatch would certify something else than what was selected.

    Args:
        policy_file: The loaded ``policy.json``.
        path: Its path (for messages).
        safety: The config's safety section (plain data).
        data: ``dataset_fingerprint`` and ``split_fingerprints`` of the config's data and splits.
        reference_sampler: ``describe()`` of the config's reference sampler.

    Raises:
        ConfigError: listing every mismatch, each with both values.
    """
    problems = []
    safety = _plain(safety)
    for key in sorted(set(safety) | set(policy_file.safety)):
        mine, theirs = safety.get(key), policy_file.safety.get(key)
        if mine != theirs:
            problems.append(
                f"safety.{key}: the policy was selected for {theirs!r}, the config says {mine!r}; "
                "certify with the safety section it was aligned with, or align again"
            )
    recorded = policy_file.data
    if data["dataset_fingerprint"] != recorded["dataset_fingerprint"]:
        problems.append(
            "data: the config's data is not the data the policy was aligned on (dataset "
            f"fingerprint {data['dataset_fingerprint'][:12]}… vs {recorded['dataset_fingerprint'][:12]}…)"
        )
    elif _plain(data["split_fingerprints"]) != recorded["split_fingerprints"]:
        problems.append(
            "data: the config splits the data differently from the aligned run (seed or split "
            "fractions changed), so its safety prompts are not the ones the policy was selected for"
        )
    policy = policy_file.policy
    tilted = isinstance(policy, TiltedPolicy)  # an LM policy samples itself, not the sampler
    if tilted and dict(policy.reference_sampler) != _plain(reference_sampler):
        problems.append(
            f"reference sampler: the policy was selected on candidates from "
            f"{dict(policy.reference_sampler)}, the config's reference sampler is "
            f"{_plain(reference_sampler)} (policy.num_candidates or the data changed?)"
        )
    if problems:
        raise ConfigError(problems, source=str(path))
