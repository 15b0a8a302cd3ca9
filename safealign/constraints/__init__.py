"""KL-regularised solvers over candidate sets, HC-RLHF selection and safety test, MaxMin."""

from safealign._lazy import lazy_exports

_EXPORTS = {
    "safealign.constraints.align": ("optimize_policy", "AlignResult", "Scorers"),
    "safealign.constraints.hc_rlhf": ("certify", "certify_samples"),
    "safealign.constraints.certificate": ("Certificate", "write_certificate"),
    "safealign.constraints.bounds": ("upper_bound", "BoundResult"),
    "safealign.constraints.candidates": ("Candidates", "load_candidates"),
    "safealign.constraints.group_rewards": ("normalize_group_rewards", "group_report"),
    "safealign.constraints.maxmin_solver": ("solve_maxmin", "MaxMinResult"),
    "safealign.constraints.maxmin_pessimistic": ("solve_maxmin_pessimistic", "group_cost_lambdas"),
    "safealign.constraints.selection": ("select_candidate_policy", "SelectionResult"),
    "safealign.constraints.solvers": (
        "solve_unconstrained",
        "solve_constrained",
        "policy_objective",
        "SolverResult",
    ),
    "safealign.constraints.tilting": ("TiltedPolicy",),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
