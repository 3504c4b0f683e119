"""Privacy audits: what an honest-but-curious server learns from federated MF uploads.

Setting (FedMF; Chai et al., "Secure Federated Matrix Factorization", IEEE Intelligent Systems
2020). A client with private user embedding ``u`` trains on its positives (label 1) and sampled
negatives (label 0) with BCE on ``s = <u, v_i> + b_i (+ b_u)`` and uploads, for each item row
it touched, ``Δv_i ≈ lr·(y - σ(s))·u`` and ``Δb_i ≈ lr·(y - σ(s))``: positive rows point along
``+u`` with ``Δb_i > 0``, negative rows along ``-u`` with ``Δb_i < 0``. Every upload of one
client is therefore (close to) rank one, and its sign splits positives from negatives.

Attacks
-------
* **Item inference** from one client's upload (the attack of Chai et al. §III and of
  Lin et al., "FedRec", IEEE IS 2021, which motivates uploading fake items): score each item.
  Items the client did not upload get ``-inf``: sparse uploads reveal their index set, and the
  positives are always inside it. Among uploaded rows the score is the bias delta when the
  bias is uploaded (its sign is the label), else the projection of the row on the rows' top
  right singular vector (``±u/‖u‖``) oriented so that the *minority* sign scores positive:
  with ``r`` > 1 negatives per positive the positives are the minority. On a tie the SVD's
  arbitrary sign is kept (a coin flip). Scores ``> 0`` are the attack's predicted positives.
* **Aggregate inference**: under secure aggregation or HE the server sees only the sum over
  clients. The same scoring applied to the sum is used as every client's guess. It measures
  what the sum reveals about an individual: with uniformly chosen items that tends to chance
  as the sum grows (each client's own share of an item's sum shrinks like 1/sqrt(#terms));
  with a skewed popularity it beats chance by learning popularity, a population-level fact
  that aggregation does not hide (and should not be called a per-client leak).
* **Membership inference** on a final model (Yeom et al., "Privacy Risk in Machine Learning:
  Analyzing the Connection to Overfitting", CSF 2018): threshold the model's score; its AUC
  over all thresholds between training interactions and never-interacted items is the audit.

ROC-AUC is the rank (Mann-Whitney) statistic with tied scores sharing their average rank, i.e.
P(positive > negative) + ½·P(tie); no scikit-learn needed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


# ------------------------------------------------------------------ validation


def _finite(x: npt.ArrayLike, what: str) -> F64:
    a = np.asarray(x, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contains {int((~np.isfinite(a)).sum())} non-finite values")
    return a


def _item_ids(ids: npt.ArrayLike, n_items: int, what: str, *, unique: bool) -> IntArray:
    a = np.asarray(ids)
    if a.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{what} must be integer item ids, got dtype {a.dtype}")
    out = a.astype(np.int64)
    if out.size and (out.min() < 0 or out.max() >= n_items):
        raise ValueError(f"{what} has ids outside [0, {n_items}): min {out.min()}, max {out.max()}")
    if unique and np.unique(out).size != out.size:
        raise ValueError(f"{what} has duplicate item ids")
    return out


def _check_n_items(n_items: int) -> None:
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")


# ------------------------------------------------------------------ item inference


def _principal_scores(rows: F64) -> F64:
    """Projection on the top right singular vector, oriented so the minority sign is > 0."""
    if rows.shape[0] == 0:
        return np.zeros(0)
    if not rows.any():
        return np.zeros(rows.shape[0])
    # Uncentred on purpose: the rows are ±c·u through the origin, not a cloud around a mean.
    _, _, vt = np.linalg.svd(rows, full_matrices=False)
    p: F64 = rows @ vt[0]
    if (p > 0).sum() > (p < 0).sum():
        p = -p
    return p


def item_inference_scores(
    n_items: int,
    item_ids: npt.ArrayLike | None,
    row_deltas: npt.ArrayLike | None,
    bias_deltas: npt.ArrayLike | None = None,
) -> F64:
    """One score per item from one client's upload; higher = more likely interacted.

    ``item_ids`` given: a sparse upload, ``row_deltas`` is ``(len(item_ids), d)`` and
    ``bias_deltas`` ``(len(item_ids),)``. ``item_ids`` None: a dense upload of every row,
    ``(n_items, d)`` and ``(n_items,)``; rows whose deltas are all exactly zero count as not
    uploaded. Either delta may be None, not both. Not-uploaded items score ``-inf``; scores
    ``> 0`` are the predicted positives (see the module docstring for the heuristic).
    """
    _check_n_items(n_items)
    if row_deltas is None and bias_deltas is None:
        raise ValueError("need row_deltas, bias_deltas or both")
    if item_ids is not None:
        ids = _item_ids(item_ids, n_items, "item_ids", unique=True)
        m = ids.size
    else:
        m = n_items
    rows = bias = None
    if row_deltas is not None:
        rows = _finite(row_deltas, "row_deltas")
        if rows.ndim != 2 or rows.shape[0] != m:
            want = "len(item_ids)" if item_ids is not None else "n_items"
            raise ValueError(f"row_deltas must be ({want}={m}, d), got shape {rows.shape}")
    if bias_deltas is not None:
        bias = _finite(bias_deltas, "bias_deltas")
        if bias.shape != (m,):
            want = "len(item_ids)" if item_ids is not None else "n_items"
            raise ValueError(f"bias_deltas must be ({want}={m},), got shape {bias.shape}")
    if item_ids is None:
        touched = np.zeros(n_items, dtype=bool)
        if rows is not None:
            touched |= rows.any(axis=1)
        if bias is not None:
            touched |= bias != 0
        ids = np.flatnonzero(touched)
        rows = None if rows is None else rows[ids]
        bias = None if bias is None else bias[ids]
    scores = np.full(n_items, -np.inf)
    if bias is not None:  # its sign is the label; no need to estimate ±u
        scores[ids] = bias
    elif rows is not None:
        scores[ids] = _principal_scores(rows)
    return scores


def aggregate_inference_scores(
    aggregate_row_deltas: npt.ArrayLike | None,
    aggregate_bias_deltas: npt.ArrayLike | None = None,
) -> F64:
    """Scores from the sum over clients (all the server sees under SecAgg or HE).

    The same heuristic as a dense :func:`item_inference_scores`; the result is every client's
    guess. ``aggregate_row_deltas`` is ``(n_items, d)``, ``aggregate_bias_deltas``
    ``(n_items,)``.
    """
    if aggregate_row_deltas is not None:
        n_items = int(np.shape(aggregate_row_deltas)[0])
    elif aggregate_bias_deltas is not None:
        n_items = int(np.shape(aggregate_bias_deltas)[0])
    else:
        raise ValueError("need aggregate_row_deltas, aggregate_bias_deltas or both")
    return item_inference_scores(n_items, None, aggregate_row_deltas, aggregate_bias_deltas)


# ------------------------------------------------------------------ evaluation


def roc_auc(positive_scores: npt.ArrayLike, negative_scores: npt.ArrayLike) -> float:
    """P(positive > negative) + ½·P(tie), by average ranks in O(n log n). ``±inf`` allowed."""
    pos = np.asarray(positive_scores, dtype=np.float64).ravel()
    neg = np.asarray(negative_scores, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError(
            f"ROC-AUC needs both classes: got {pos.size} positive and {neg.size} negative scores"
        )
    both = np.concatenate([pos, neg])
    if np.isnan(both).any():
        raise ValueError("scores contain NaN")
    order = np.argsort(both, kind="stable")
    sorted_ = both[order]
    # Tie groups in sorted order; every member gets the group's average 1-based rank.
    starts = np.flatnonzero(np.r_[True, sorted_[1:] != sorted_[:-1]])
    ends = np.r_[starts[1:], both.size]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(both.size)
    ranks[order] = np.repeat(avg, ends - starts)
    n_pos, n_neg = pos.size, neg.size
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


@dataclass(frozen=True)
class InferenceResult:
    """One client's item-inference outcome next to a random guesser's."""

    auc: float
    precision: float
    recall: float
    f1: float
    k: int
    """How many items were predicted positive."""
    n_truth: int
    n_items: int
    baseline_auc: float
    baseline_precision: float
    """Expected precision of k items drawn at random: |truth| / n_items."""
    baseline_recall: float
    """Expected recall of k random items: k / n_items."""
    baseline_f1: float


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def evaluate_inference(
    scores: npt.ArrayLike, truth: npt.ArrayLike, n_items: int, k: int | None = None
) -> InferenceResult:
    """AUC over all items, and precision/recall/F1 of the predicted set.

    ``truth``: the item ids the client interacted with this round (duplicates are merged).
    Predicted set: the ``k`` top-scoring items (ties broken by lower item id) when ``k`` is
    given; otherwise the heuristic's own decision, items scoring ``> 0`` (see
    :func:`item_inference_scores`), and when it predicts nothing, the top ``|truth|`` items
    (an oracle-sized guess, so precision = recall).
    """
    _check_n_items(n_items)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (n_items,):
        raise ValueError(f"scores must have shape (n_items={n_items},), got {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    t = np.unique(_item_ids(truth, n_items, "truth", unique=False))
    if t.size == 0:
        raise ValueError("truth is empty: inference metrics are undefined for this client")
    if t.size == n_items:
        raise ValueError("truth holds every item: there is nothing to separate it from")
    is_true = np.zeros(n_items, dtype=bool)
    is_true[t] = True
    auc = roc_auc(s[is_true], s[~is_true])
    if k is None:
        predicted = np.flatnonzero(s > 0)
        if predicted.size == 0:
            predicted = np.argsort(-s, kind="stable")[: t.size]
    else:
        if not 1 <= k <= n_items:
            raise ValueError(f"k must be in [1, n_items={n_items}], got {k}")
        predicted = np.argsort(-s, kind="stable")[:k]
    kk = int(predicted.size)
    tp = int(is_true[predicted].sum())
    precision, recall = tp / kk, tp / t.size
    bp, br = t.size / n_items, kk / n_items
    return InferenceResult(
        auc=auc,
        precision=precision,
        recall=recall,
        f1=_f1(precision, recall),
        k=kk,
        n_truth=int(t.size),
        n_items=n_items,
        baseline_auc=0.5,
        baseline_precision=bp,
        baseline_recall=br,
        baseline_f1=_f1(bp, br),
    )


def summarize(results: Sequence[InferenceResult]) -> dict[str, float]:
    """Mean and (population) std of every field over clients, plus ``n_clients``."""
    if not results:
        raise ValueError("summarize needs at least one InferenceResult")
    out: dict[str, float] = {"n_clients": float(len(results))}
    for f in fields(InferenceResult):
        v = np.array([asdict(r)[f.name] for r in results], dtype=np.float64)
        out[f"{f.name}_mean"] = float(v.mean())
        out[f"{f.name}_std"] = float(v.std())
    return out


# ------------------------------------------------------------------ membership inference


def membership_inference_auc(
    member_scores: npt.ArrayLike, nonmember_scores: npt.ArrayLike
) -> float:
    """AUC of the score-threshold attack (Yeom et al. 2018): 0.5 = no membership leakage.

    Pass the model's scores (or negated losses) of training interactions and of items the
    user never interacted with; one threshold for all users, as in the paper's global attack.
    """
    m = _finite(member_scores, "member_scores")
    n = _finite(nonmember_scores, "nonmember_scores")
    return roc_auc(m, n)


@dataclass(frozen=True)
class MembershipSample:
    """(user, item) pairs to score: training positives and equally many never-seen items."""

    users: IntArray
    items: IntArray
    is_member: BoolArray


def sample_membership_pairs(
    train_users: npt.ArrayLike,
    train_items: npt.ArrayLike,
    n_items: int,
    rng: np.random.Generator,
    *,
    exclude_users: npt.ArrayLike | None = None,
    exclude_items: npt.ArrayLike | None = None,
) -> MembershipSample:
    """Per user: members = its distinct training items; non-members = as many items drawn
    without replacement from those it never interacted with (not in training, nor in the
    ``exclude_*`` pairs, e.g. its validation and test items, which are not "never interacted").
    A user with fewer never-interacted items than members keeps a random subset of members of
    that size, so every user contributes equal counts and no user dominates either class.
    """
    _check_n_items(n_items)
    tu = np.asarray(train_users)
    ti = _item_ids(train_items, n_items, "train_items", unique=False)
    if tu.shape != ti.shape:
        raise ValueError(f"train_users {tu.shape} and train_items {ti.shape} differ in shape")
    if tu.size and not np.issubdtype(tu.dtype, np.integer):
        raise ValueError(f"train_users must be integer ids, got dtype {tu.dtype}")
    tu = tu.astype(np.int64)
    if (exclude_users is None) != (exclude_items is None):
        raise ValueError("give both exclude_users and exclude_items, or neither")
    eu = np.zeros(0, np.int64) if exclude_users is None else np.asarray(exclude_users, np.int64)
    ei = (
        np.zeros(0, np.int64)
        if exclude_items is None
        else _item_ids(exclude_items, n_items, "exclude_items", unique=False)
    )
    if eu.shape != ei.shape:
        raise ValueError(f"exclude_users {eu.shape} and exclude_items {ei.shape} differ in shape")
    # Group both pair lists by user once (sort), instead of a boolean mask per pair.
    users_all = np.concatenate([tu, eu])
    items_all = np.concatenate([ti, ei])
    is_train = np.r_[np.ones(tu.size, bool), np.zeros(eu.size, bool)]
    order = np.lexsort((items_all, users_all))
    users_all, items_all, is_train = users_all[order], items_all[order], is_train[order]
    bounds = np.flatnonzero(np.r_[True, users_all[1:] != users_all[:-1], True])
    out_u: list[IntArray] = []
    out_i: list[IntArray] = []
    out_m: list[BoolArray] = []
    seen = np.zeros(n_items, dtype=bool)
    for a, b in itertools.pairwise(bounds):
        members = np.unique(items_all[a:b][is_train[a:b]])
        if members.size == 0:
            continue  # a user with only excluded pairs has nothing to audit
        seen[items_all[a:b]] = True
        pool = np.flatnonzero(~seen)
        seen[items_all[a:b]] = False
        n = min(members.size, pool.size)
        if n == 0:
            continue
        if n < members.size:
            members = np.sort(rng.choice(members, size=n, replace=False))
        non = np.sort(rng.choice(pool, size=n, replace=False))
        out_u.append(np.full(2 * n, users_all[a], dtype=np.int64))
        out_i.append(np.concatenate([members, non]).astype(np.int64))
        out_m.append(np.r_[np.ones(n, bool), np.zeros(n, bool)])
    if not out_u:
        raise ValueError("no user has both a training item and a never-interacted item")
    return MembershipSample(
        users=np.concatenate(out_u), items=np.concatenate(out_i), is_member=np.concatenate(out_m)
    )
