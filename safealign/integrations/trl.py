"""safealign's private reward and cost models as reward functions for TRL's trainers.

``reward_funcs`` in ``trl.GRPOTrainer`` (and RLOO) takes callables
``f(prompts, completions, **kwargs) -> list[float]``: one number per completion, called with the
batch's prompts and decoded completions (plain strings, or for a conversational dataset lists
of ``{"role", "content"}`` messages), plus ``completion_ids``, the dataset's other columns,
``trainer_state``, ``log_metric`` and ``log_extra``. :class:`RewardFunction` is such a callable::

    reward = reward_function_from_run("runs/run")       # reward - λ·cost, λ from policy.json
    trainer = GRPOTrainer(model=..., reward_funcs=reward, args=GRPOConfig(...))

It returns ``r(x, y) - λ·c(x, y)``: the reward model's score minus λ times the cost model's,
exactly the numbers :meth:`ScoringModel.score` gives (the same tokenisation, truncation and
pooling: nothing is re-implemented). λ is given, or read from an aligned run's ``policy.json``
(``selection.lambda``, the multiplier HC-RLHF step 1 selected). What carries over is the
reward:cost trade-off, not the constraint: λ was chosen for the run's own optimiser (a KL tilt of
weight ``policy.beta`` over candidates), while TRL's ``beta`` weighs a per-token KL against
group-normalised advantages, another problem whose optimum may cost more or less. This is a
training signal, not a certificate: only ``safealign certify`` on the released model bounds its
cost.

Privacy: scoring completions with the released models is post-processing of their DP release:
it spends no budget, whatever TRL does with the numbers.

TRL itself is never imported here: the adapter is a plain callable (not an ``nn.Module``, which
TRL would call as a sequence classifier).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safealign.errors import ConfigError
from safealign.models.scalar import ScoringModel, load_scoring_model
from safealign.run.paths import POLICY_FILE
from safealign.run.policy_file import load_policy_file

Message = Mapping[str, Any]
_ROLES = {"user": "Human", "assistant": "Assistant"}


def render_prompt(prompt: str | Sequence[Message]) -> str:
    """The prompt text a safealign model scores: a string as it is; a conversation with a single
    user message, that message's text (the generic JSONL and PKU-SafeRLHF prompt); a longer one in
    HH-RLHF's dialogue format (``"\\n\\nHuman: …\\n\\nAssistant: …"`` ending ``"\\n\\nAssistant:"``,
    the prompt safealign's HH-RLHF loader produces), system messages first as plain paragraphs.
    Pass your own ``render_prompt`` to match the prompts your model was trained on."""
    if isinstance(prompt, str):
        return prompt
    messages = list(prompt)
    if len(messages) == 1 and messages[0].get("role") == "user":
        return _text(messages[0])
    parts = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role == "system":
            parts.append(_text(message))
        elif role in _ROLES:
            parts.append(f"\n\n{_ROLES[role]}: {_text(message)}")
        else:
            raise ConfigError(
                f"prompt message {i} has role {role!r}; the default rendering knows system, user "
                "and assistant: pass render_prompt= to reward_function"
            )
    return "".join(parts) + "\n\nAssistant:"


def render_completion(completion: str | Sequence[Message]) -> str:
    """A completion's text: a string as it is, or the text of its messages (TRL gives one
    assistant message per completion for a conversational dataset)."""
    if isinstance(completion, str):
        return completion
    return "\n\n".join(_text(m) for m in completion)


def _text(message: Message) -> str:
    content = message.get("content", "")
    if isinstance(content, str):
        return content
    # Multimodal content: a list of parts, of which only the text parts can be scored.
    return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))


@dataclass(frozen=True)
class RewardFunction:
    """``f(prompts, completions, **kwargs) -> list[float]`` for TRL: ``r - lambda_·c`` per completion.

    Attributes:
        reward: The reward model.
        cost: The cost model (None: the reward alone).
        lambda_: The cost multiplier λ ≥ 0 (0 without a cost model).
        render_prompt: Prompt (string or messages) to the text the models score.
        name: The name TRL logs the reward under.
    """

    reward: ScoringModel
    cost: ScoringModel | None = None
    lambda_: float = 0.0
    render_prompt: Callable[[Any], str] = render_prompt
    name: str = "safealign_reward"

    def __post_init__(self) -> None:
        problems = []
        if self.reward.kind != "reward":
            problems.append(f"reward: this is a {self.reward.kind} model, not a reward model")
        if self.cost is not None and self.cost.kind != "cost":
            problems.append(f"cost: this is a {self.cost.kind} model, not a cost model")
        if not (isinstance(self.lambda_, int | float) and math.isfinite(self.lambda_)) or (
            self.lambda_ < 0
        ):
            problems.append(f"lambda_ must be a finite number >= 0 (got {self.lambda_!r})")
        elif self.lambda_ > 0 and self.cost is None:
            problems.append(f"lambda_={self.lambda_:g} penalises a cost: give the cost model too")
        if problems:
            raise ConfigError(problems)

    @property
    def __name__(self) -> str:  # what TRL's get_callable_name reads for the logs
        return self.name

    def scores(
        self, prompts: Sequence[Any], completions: Sequence[Any]
    ) -> tuple[list[float], list[float] | None]:
        """Reward and cost (None without a cost model) of each (prompt, completion)."""
        texts = [self.render_prompt(p) for p in prompts]
        responses = [render_completion(c) for c in completions]
        reward = self.reward.score(texts, responses).tolist()
        cost = None if self.cost is None else self.cost.score(texts, responses).tolist()
        return reward, cost

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        reward, cost = self.scores(prompts, completions)
        log = kwargs.get("log_metric")
        if log is not None and reward:
            log(f"{self.name}/reward", sum(reward) / len(reward))
            if cost is not None:
                log(f"{self.name}/cost", sum(cost) / len(cost))
        if cost is None or self.lambda_ == 0:
            return reward
        return [r - self.lambda_ * c for r, c in zip(reward, cost, strict=True)]


def reward_function(
    reward: ScoringModel | str | Path,
    *,
    cost: ScoringModel | str | Path | None = None,
    lambda_: float = 0.0,
    render_prompt: Callable[[Any], str] = render_prompt,
) -> RewardFunction:
    """A TRL reward function ``r - lambda_·c`` from models or model directories.

    Raises:
        DataError: a path is not a safealign model directory.
        ConfigError: wrong model kinds, or a bad ``lambda_``.
    """
    return RewardFunction(
        reward=_load(reward),
        cost=None if cost is None else _load(cost),
        lambda_=lambda_,
        render_prompt=render_prompt,
    )


def reward_function_from_run(
    run_dir: str | Path, *, render_prompt: Callable[[Any], str] = render_prompt
) -> RewardFunction:
    """``r - λ·c`` with the run's reward and cost models and the λ that ``safealign align``
    recorded in ``RUN_DIR/policy.json``.

    Raises:
        DataError: ``policy.json`` is missing or malformed, or a model directory is not one.
        ConfigError: the run selected no policy (no λ), or has group reward models (MaxMin:
            build the reward yourself with :func:`reward_function`).
    """
    run_dir = Path(run_dir)
    path = run_dir / POLICY_FILE
    policy_file = load_policy_file(path)
    if policy_file.models.reward is None:
        raise ConfigError(
            "this run has one reward model per group (MaxMin), which a single reward function "
            "does not combine; use reward_function(reward=..., cost=..., lambda_=...)",
            source=str(path),
        )
    lam = policy_file.selection.get("lambda")
    if policy_file.policy is None or not isinstance(lam, int | float):
        raise ConfigError(
            f"the run selected no policy ({policy_file.reason or 'no lambda recorded'}), so there "
            "is no cost multiplier to read; pass lambda_ to reward_function",
            source=str(path),
        )
    return RewardFunction(
        reward=load_scoring_model(run_dir / policy_file.models.reward),
        cost=load_scoring_model(run_dir / policy_file.models.cost),
        lambda_=float(lam),
        render_prompt=render_prompt,
    )


def _load(model: ScoringModel | str | Path) -> ScoringModel:
    return load_scoring_model(model) if isinstance(model, str | Path) else model
