"""Privacy accounting for DP-SGD: thin, pure wrappers over the Opacus accountants.

A DP-SGD run is a Poisson-subsampled Gaussian mechanism composed ``steps`` times
(:class:`Mechanism`). Everything that spends budget on one dataset (reward model, cost model,
each EM M-step, ...) is composed *sequentially in one accountant*: the histories of all runs are
fed to a single Opacus accountant, whose ε is much tighter than the sum of per-run ε's (basic
composition, :func:`naive_epsilon_sum`). Disjoint subsets compose in parallel; that is the
caller's business (different fingerprints in the ledger).

Every ε in safealign comes from :func:`compute_epsilon`, so the training receipt, the ledger and
the report agree to the last bit: the history is put in a canonical order first (see
:func:`canonical_history`), so ε depends only on the multiset of mechanisms, not on how a run was
split (a resume) or in which order releases were charged. The ledger stores each mechanism's
three numbers exactly (SQLite REAL is a 64-bit float), so ε recomputed from it is the same ε.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Literal

from opacus.accountants import IAccountant, PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from safealign.errors import ConfigError, PrivacyError

AccountantName = Literal["prv", "rdp"]
ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp")
_ACCOUNTANT_CLASSES: dict[str, type[IAccountant]] = {"prv": PRVAccountant, "rdp": RDPAccountant}


@dataclass(frozen=True)
class Mechanism:
    """One DP-SGD run: a Poisson-subsampled Gaussian mechanism composed ``steps`` times.

    Attributes:
        noise_multiplier: Gaussian noise std divided by ``max_grad_norm`` (σ), > 0.
        sample_rate: Poisson sampling probability of each record per step (q), in (0, 1].
        steps: Number of noisy optimizer steps (T), ≥ 0. Zero steps spend nothing.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        problems = []
        sigma, rate, steps = self.noise_multiplier, self.sample_rate, self.steps
        if not _is_real(sigma) or not (math.isfinite(sigma) and sigma > 0):
            problems.append(
                f"noise_multiplier must be a finite number > 0 (got {sigma!r}); "
                "noise_multiplier=0 means no noise and an infinite epsilon"
            )
        if not _is_real(rate) or not (0.0 < rate <= 1.0):
            problems.append(f"sample_rate must be in (0, 1] (got {rate!r})")
        if not isinstance(steps, Integral) or isinstance(steps, bool) or steps < 0:
            problems.append(f"steps must be an integer >= 0 (got {steps!r})")
        if problems:
            raise ConfigError(problems, source="Mechanism")
        # Normalise numpy scalars (Opacus histories hold np.float64) to plain Python numbers,
        # so that JSON round trips and equality are exact.
        object.__setattr__(self, "noise_multiplier", float(sigma))
        object.__setattr__(self, "sample_rate", float(rate))
        object.__setattr__(self, "steps", int(steps))


@dataclass(frozen=True)
class AccountingResult:
    """The (ε, δ) guarantee of a sequence of mechanisms composed in one accountant.

    Attributes:
        epsilon: Upper bound on ε at ``target_delta``.
        target_delta: The δ the bound holds at.
        accountant: The accountant that produced ``epsilon`` (``"prv"`` or ``"rdp"``).
        fallback_reason: Why PRV was abandoned for RDP, or ``None`` if no fallback happened.
        mechanisms: The mechanisms composed, as given.
    """

    epsilon: float
    target_delta: float
    accountant: str
    fallback_reason: str | None
    mechanisms: tuple[Mechanism, ...]


def _is_real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"accountant must be one of {list(ACCOUNTANTS)} (got {accountant!r})")


def _check_delta(target_delta: float) -> None:
    if not _is_real(target_delta) or not (0.0 < target_delta < 1.0):
        raise ConfigError(f"target_delta must be in (0, 1) (got {target_delta!r})")


def _as_mechanisms(mechanisms: Mechanism | Iterable[Mechanism]) -> tuple[Mechanism, ...]:
    items = (mechanisms,) if isinstance(mechanisms, Mechanism) else tuple(mechanisms)
    for item in items:
        if not isinstance(item, Mechanism):
            raise ConfigError(f"expected Mechanism instances, got {type(item).__name__}")
    return items


def canonical_history(mechanisms: Iterable[Mechanism]) -> list[tuple[float, float, int]]:
    """Opacus history ``[(noise_multiplier, sample_rate, steps), ...]`` in canonical form.

    Runs with the same (σ, q) are merged (their steps add up, exactly what Opacus' own
    ``step()`` does for consecutive equal steps, e.g. after a resume), zero-step runs are dropped
    and entries are sorted. Composition is commutative, so this changes no guarantee; it makes ε a
    function of the multiset of steps, bit-for-bit independent of how a run was split or in which
    order releases happened (PRV differs by ~1e-11 between ``[(σ,q,T),(σ,q,T)]`` and
    ``[(σ,q,2T)]`` otherwise).
    """
    steps: dict[tuple[float, float], int] = {}
    for mechanism in _as_mechanisms(mechanisms):
        if mechanism.steps > 0:
            key = (mechanism.noise_multiplier, mechanism.sample_rate)
            steps[key] = steps.get(key, 0) + mechanism.steps
    return [(sigma, rate, count) for (sigma, rate), count in sorted(steps.items())]


def _epsilon_from_history(
    accountant: str, history: list[tuple[float, float, int]], target_delta: float
) -> float:
    instance = _ACCOUNTANT_CLASSES[accountant]()
    instance.load_state_dict({"history": list(history), "mechanism": accountant})
    return float(instance.get_epsilon(delta=target_delta))


def _valid_epsilon(epsilon: float) -> bool:
    return math.isfinite(epsilon) and epsilon >= 0.0


def compute_epsilon(
    mechanisms: Mechanism | Sequence[Mechanism],
    *,
    target_delta: float,
    accountant: AccountantName = "prv",
) -> AccountingResult:
    """ε of the mechanisms composed sequentially in one accountant, at ``target_delta``.

    All histories go into *one* accountant: PRV convolves the privacy-loss distributions and RDP
    adds Rényi divergences before converting to (ε, δ) once, both far tighter than adding the
    ε's of separate runs. PRV is the tightest; it is known to fail on some schedules ("Discrete
    mean differs significantly from continuous mean", overflow, negative ε). Then we fall back to
    RDP, which is always a valid (looser) upper bound, and say why in ``fallback_reason``.

    Args:
        mechanisms: One mechanism or a sequence of them, all on the same records.
        target_delta: δ of the guarantee, in (0, 1).
        accountant: ``"prv"`` (default, tight) or ``"rdp"``.

    Returns:
        The guarantee, with the accountant actually used.

    Raises:
        ConfigError: On an unknown accountant or invalid parameters.
        PrivacyError: If even RDP yields no finite ε.
    """
    _check_accountant(accountant)
    _check_delta(target_delta)
    given = _as_mechanisms(mechanisms)
    history = canonical_history(given)
    if not history:
        return AccountingResult(0.0, target_delta, accountant, None, given)
    fallback_reason = None
    if accountant == "prv":
        try:
            epsilon = _epsilon_from_history("prv", history, target_delta)
        except Exception as exc:  # any PRV numerical failure: RDP is still a valid bound
            fallback_reason = f"PRV accountant failed ({type(exc).__name__}: {exc})"
        else:
            if _valid_epsilon(epsilon):
                return AccountingResult(epsilon, target_delta, "prv", None, given)
            fallback_reason = f"PRV accountant returned an invalid epsilon ({epsilon!r})"
    epsilon = _epsilon_from_history("rdp", history, target_delta)
    if not _valid_epsilon(epsilon):
        raise PrivacyError(
            f"the RDP accountant returned epsilon={epsilon!r} at target_delta={target_delta:g} "
            f"for history {history}; the noise is too small to give any guarantee"
        )
    return AccountingResult(epsilon, target_delta, "rdp", fallback_reason, given)


def naive_epsilon_sum(
    mechanisms: Mechanism | Sequence[Mechanism],
    *,
    target_delta: float,
    accountant: AccountantName = "prv",
) -> float:
    """ε by basic composition: each mechanism accounted alone, the ε's added.

    To be a valid (ε, ``target_delta``) bound comparable with :func:`compute_epsilon`, each of the
    k mechanisms is accounted at ``target_delta / k`` (basic composition adds the δ's too). Shown
    next to the composed ε to make the gain of one accountant visible; never used for decisions.
    """
    _check_delta(target_delta)
    spending = [m for m in _as_mechanisms(mechanisms) if m.steps > 0]
    if len(spending) < 2:  # basic composition of one mechanism (or none) is the mechanism
        return compute_epsilon(spending, target_delta=target_delta, accountant=accountant).epsilon
    share = target_delta / len(spending)
    return math.fsum(
        compute_epsilon([m], target_delta=share, accountant=accountant).epsilon for m in spending
    )


def _noise_for(
    accountant: str,
    *,
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    epsilon_tolerance: float,
) -> float:
    """Opacus' bisection, then a check that the σ found really meets the target."""
    with warnings.catch_warnings():
        # The bisection probes huge σ (up to 1e6), where RDP's best order is the largest one;
        # that warning is about probes, not about the σ returned.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        noise_multiplier = float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=target_delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=epsilon_tolerance,
            )
        )
    # get_noise_multiplier silently returns a wrong σ when the accountant yields NaN (every
    # comparison with NaN is False), so verify with the accountant, without fallback.
    history = canonical_history([Mechanism(noise_multiplier, sample_rate, steps)])
    epsilon = _epsilon_from_history(accountant, history, target_delta)
    if not (_valid_epsilon(epsilon) and epsilon <= target_epsilon):
        raise ValueError(
            f"noise_multiplier={noise_multiplier:.6g} gives epsilon={epsilon!r} > "
            f"target_epsilon={target_epsilon:g}"
        )
    return noise_multiplier


def calibrate_noise(
    *,
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantName = "prv",
    epsilon_tolerance: float = 0.01,
) -> float:
    """Smallest noise_multiplier (within tolerance) whose ε after ``steps`` is ≤ target_epsilon.

    Wraps ``opacus.accountants.utils.get_noise_multiplier``. The returned σ satisfies
    ``target_epsilon - epsilon_tolerance <= ε(σ) <= target_epsilon`` for the accountant used. If
    PRV fails, RDP calibrates instead: its σ is larger, so the guarantee still holds under PRV.
    Call :func:`compute_epsilon` on the resulting mechanism for the receipt; it reports its own
    accountant and fallback.

    Raises:
        ConfigError: On invalid parameters.
        PrivacyError: If no noise_multiplier up to 1e6 reaches the target.
    """
    _check_accountant(accountant)
    _check_delta(target_delta)
    if not _is_real(target_epsilon) or not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError(f"target_epsilon must be a finite number > 0 (got {target_epsilon!r})")
    Mechanism(1.0, sample_rate, steps)  # validates sample_rate and steps
    if steps == 0:
        raise ConfigError("steps must be >= 1 to calibrate noise (got 0)")
    arguments = dict(
        target_epsilon=target_epsilon,
        target_delta=target_delta,
        sample_rate=sample_rate,
        steps=steps,
        epsilon_tolerance=epsilon_tolerance,
    )
    order = ["prv", "rdp"] if accountant == "prv" else ["rdp"]
    failures = []
    for name in order:
        try:
            return _noise_for(name, **arguments)
        except Exception as exc:  # PRV: numerical failure; RDP: budget too low
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    raise PrivacyError(
        f"cannot calibrate noise for target_epsilon={target_epsilon:g}, "
        f"target_delta={target_delta:g}, sample_rate={sample_rate:g}, steps={steps} "
        f"({'; '.join(failures)}); raise target_epsilon or lower sample_rate or steps"
    )


def check_target_delta(target_delta: float, n_records: int) -> None:
    """Refuse a δ that is not below 1/n.

    (ε, δ)-DP with δ ≥ 1/n is satisfied by a mechanism that publishes a random record in the
    clear, so such a δ gives no meaningful protection. The usual choice is δ ≪ 1/n.

    Raises:
        ConfigError: If ``n_records`` is not a positive integer or δ is not in (0, 1).
        PrivacyError: If ``target_delta >= 1 / n_records``.
    """
    _check_delta(target_delta)
    if not isinstance(n_records, Integral) or isinstance(n_records, bool) or n_records < 1:
        raise ConfigError(f"n_records must be an integer >= 1 (got {n_records!r})")
    limit = 1.0 / n_records
    if target_delta >= limit:
        suggestion = 10.0 ** math.floor(math.log10(limit / 10.0))
        raise PrivacyError(
            f"target_delta={target_delta:g} is not below 1/n = {limit:.3g} for n={n_records} "
            f"records: a mechanism that leaks a whole record would satisfy it; "
            f"use target_delta <= {suggestion:g}"
        )
