"""HC-RLHF step 1 for a causal LM: tilt-and-distil, and REINFORCE-Lagrangian (Chittepu et al. 2025).

Both optimise ``E_pi[r] - beta KL(pi || pi_ref)`` under the pessimistic constraint
``mean(c) + k std(c) <= cost_threshold`` (``k`` from :func:`bounds.pessimism_k`; DESIGN.md, HC-RLHF):

- :func:`iterate_tilt_distill` samples K responses per prompt from the current policy, tilts them
  with :func:`solvers.solve_pessimistic` (uniform reference weights, since the candidates were drawn
  from that policy) and distils the tilted weights back by weighted SFT, ``-sum_i q_i log pi(y_i|x)``.
- :func:`reinforce_lagrangian` trains on-policy, as in the HC-RLHF reference code: two samples per
  prompt, a leave-one-out baseline, the return ``r - beta KL - lambda c'`` with a surrogate cost whose
  policy gradient is that of mean + k std, and a multiplicative update of ``lambda``.

``reward_fn`` and ``cost_fn`` map parallel lists of prompt and response texts to ``[n]`` scores: a
trained scoring model's ``score``, or the synthetic world's ``true_reward``/``true_cost``.

:mod:`.tilt_distill` holds the first, :mod:`.reinforce` the second, :mod:`._sampling` what they
share (sampling and scoring, argument checks, derived seeds). Every public name is importable from
here.
"""

from safealign.constraints.lm_policy.reinforce import (
    LagrangianStep,
    ReinforceResult,
    reinforce_lagrangian,
)
from safealign.constraints.lm_policy.tilt_distill import (
    DistillStats,
    TiltDistillResult,
    TiltRound,
    distill,
    iterate_tilt_distill,
)

__all__ = [
    "DistillStats",
    "LagrangianStep",
    "ReinforceResult",
    "TiltDistillResult",
    "TiltRound",
    "distill",
    "iterate_tilt_distill",
    "reinforce_lagrangian",
]
