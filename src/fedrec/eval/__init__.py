"""Evaluation: ranking/rating metrics and the sampled, full-ranking and rating protocols."""

from fedrec.eval.protocols import (
    EvalResult,
    ItemSets,
    ItemSetsCSR,
    Scorer,
    csr_from_pairs,
    evaluate,
    evaluate_full,
    evaluate_ratings,
    evaluate_sampled,
    exclusion_csr,
)

__all__ = [
    "EvalResult",
    "ItemSets",
    "ItemSetsCSR",
    "Scorer",
    "csr_from_pairs",
    "evaluate",
    "evaluate_full",
    "evaluate_ratings",
    "evaluate_sampled",
    "exclusion_csr",
]
