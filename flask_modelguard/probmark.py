"""A keyed mark in the probabilities that keeps every top-1 answer, and its
exact ownership test (issue #17, point 2). Framework-free (numpy, scipy).

Each account has a key of its own (:func:`account_key`, from the app's
secret), and for each top class a keyed ordered choice of three other
classes. An answer ``p`` whose top class is ``t`` gives ``strength`` of its
mass to ``t``'s three classes, in the proportions 3 : 2 : 1:
``q = (1 - e) p + e·w``, with ``e = strength`` or less (at most half what
would tie a lifted class with the top one; none where rounding would move
the top), so the served label is always the model's. A clone trained on an
account's probability vectors learns the lifted classes; a model that does
not know the key cannot. (The account itself can: from its own answers it
can learn its classes and take them out.) Below :data:`MIN_CLASSES` classes
no test could ever reach 2^-64, so nothing is lifted.

The test (:func:`test`) needs no recorded inputs: any probe inputs will do
(the owner's data). The owner's model answers them, which groups them by top
class; the suspect answers them too, and for each group the statistic
weighs the suspect's log-residual (against the owner's answer) on the
group's keyed classes. For a model that does not know the key, each group's
keyed choice is a uniform draw among the ordered choices of three of the
``k - 1`` other classes, independent from group to group, so given the
suspect's answers the statistic's distribution is known exactly; :func:`test`
computes its tail (by convolution, each value rounded up, so from above; a
Chernoff bound where there are too many groups for it): an upper bound on
the p-value that assumes nothing about the suspect. With 10 classes the most
it can reach is ``10 · log2(9 · 8 · 7)`` = 89.8 bits (9 classes: 75.5, 8:
61.7). With more than 32 classes, one class is lifted (``log2(k - 1)`` bits
a group).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

#: The mark's definition; a change makes earlier clones untestable, so it is versioned.
VERSION = 1
#: Added before the logarithm of the test's residuals (small probabilities count, not without limit).
_DELTA = 2e-3
#: Value steps of a group's draw in the exact tail (finer: tighter, slower).
_BINS = 2048
#: Claim below this log2 p (as :data:`flask_modelguard.ownership.DEFAULT_THRESHOLD_LOG2`).
DEFAULT_THRESHOLD_LOG2 = -64.0
#: Fewest classes the mark is served for: with 8, a perfect copy tests at 2^-61.7 at best.
MIN_CLASSES = 9
#: Most cells (groups × classes) a test works on (memory: a float each, and a few copies).
_MAX_CELLS = 20_000_000


def account_key(secret: bytes, account: int | str) -> bytes:
    """The mark key of one account (a keyed hash of the app's secret and the account id)."""
    return hashlib.blake2b(f"probability-mark:v{VERSION}:{account}".encode(), key=secret[:64], digest_size=32).digest()


@functools.cache
def profile(k: int) -> np.ndarray:
    """The shares of the lifted classes, for ``k`` classes (empty below 3)."""
    weights = np.zeros(0) if k < 3 else np.array([3.0, 2.0, 1.0][: min(3, k - 1)]) if k <= 32 else np.ones(1)
    shares = weights / weights.sum() if len(weights) else weights
    shares.setflags(write=False)
    return shares


def _uniforms(key: bytes, purpose: bytes, n: int) -> np.ndarray:
    """``n`` uniforms in (0, 1), a pure function of the key and purpose (keyed hashes, no PRNG)."""
    blocks = b"".join(hashlib.blake2b(purpose + b.to_bytes(4, "little"), key=key, digest_size=64).digest()
                      for b in range(-(-n // 16)))
    return (np.frombuffer(blocks, dtype="<u4")[:n].astype(np.float64) + 0.5) / 4294967296.0


@functools.lru_cache(maxsize=4096)
def _table(key: bytes, k: int) -> np.ndarray:
    """``(k, 3)``, for ``k`` ≤ 32 classes: each top class's keyed ordered choice of other classes."""
    order = _uniforms(key, b"lifted", k * k).reshape(k, k).argsort(axis=1, kind="stable")
    table = order[order != np.arange(k)[:, None]].reshape(k, k - 1)[:, : len(profile(k))].copy()
    table.setflags(write=False)
    return table


def _lifted(key: bytes, k: int, tops: np.ndarray) -> np.ndarray:
    """``(len(tops), L)``: the lifted classes of answers whose top classes are ``tops``."""
    if len(profile(k)) > 1:
        return _table(key, k)[tops]
    # Many classes: one, uniformly among the others, hashed per top class (no k-sized table).
    unique, where = np.unique(tops, return_inverse=True)
    offset = [1 + min(int(_uniforms(key, b"lifted:%d" % t, 1)[0] * (k - 1)), k - 2) for t in unique.tolist()]
    return ((unique + np.asarray(offset, dtype=np.int64)) % k)[where.ravel()][:, None]


def lift(probs: np.ndarray, key: bytes, strength: float) -> np.ndarray:
    """``probs`` (rows that are distributions over at least :data:`MIN_CLASSES`
    classes) with the mark of ``key``; other rows as they were."""
    n, k = probs.shape
    if k < MIN_CLASSES or strength <= 0:
        return probs
    if n == 1:  # one answer a request, the common case: plain floats are 4x faster than numpy here
        return _lift_one(probs, key, strength)
    probs = np.asarray(probs, dtype=np.float64)
    valid = np.isfinite(probs).all(axis=1) & (probs >= 0).all(axis=1) & (np.abs(probs.sum(axis=1) - 1.0) < 1e-3)
    if not valid.any():
        return probs
    rows, top = np.arange(n), probs.argmax(axis=1)
    lifted, shares = _lifted(key, k, top), profile(k)
    gap = probs[rows, top][:, None] - probs[rows[:, None], lifted]
    # (1 - e) p_top > (1 - e) p_c + e w_c  <=>  e < gap / (gap + w_c): half of that, at most.
    e = np.where(valid, np.minimum(strength, 0.5 * (gap / (gap + shares)).min(axis=1)), 0.0)
    out = (1.0 - e)[:, None] * probs
    out[rows[:, None], lifted] += e[:, None] * shares
    moved = out.argmax(axis=1) != top  # a near tie that rounding resolved the other way: left alone
    out[moved] = probs[moved]
    return out


def _lift_one(probs: np.ndarray, key: bytes, strength: float) -> np.ndarray:
    """:func:`lift` of a single answer, in Python floats (the same arithmetic)."""
    return np.array([lift_row([float(v) for v in probs[0].tolist()], key, strength)])


@functools.cache
def _shares(k: int) -> list[float]:
    return [float(w) for w in profile(k)]


@functools.lru_cache(maxsize=4096)
def _table_lists(key: bytes, k: int) -> list[list[int]]:
    """:func:`_table` as lists (a single answer reads one row of it)."""
    return [[int(c) for c in row] for row in _table(key, k)]


def _choice(key: bytes, k: int, top: int) -> list[int]:
    """The lifted classes of an answer whose top class is ``top``."""
    if len(profile(k)) > 1:
        return _table_lists(key, k)[top]
    return [int(c) for c in _lifted(key, k, np.array([top]))[0]]


def lift_row(row: list[float], key: bytes, strength: float) -> list[float]:
    """:func:`lift` of one answer given as a list of floats (``row`` itself when it is left alone)."""
    k = len(row)
    if k < MIN_CLASSES or strength <= 0:
        return row
    if not all(math.isfinite(v) and v >= 0 for v in row) or abs(sum(row) - 1.0) >= 1e-3:
        return row
    top = row.index(max(row))
    lifted, shares = _choice(key, k, top), _shares(k)
    gaps = [row[top] - row[c] for c in lifted]
    e = min(strength, 0.5 * min(g / (g + w) for g, w in zip(gaps, shares)))
    out = [(1.0 - e) * v for v in row]
    for c, w in zip(lifted, shares):
        out[c] += e * w
    if out.index(max(out)) != top:  # a near tie that rounding resolved the other way
        return row
    return out


@dataclass(frozen=True)
class MarkTest:
    """The outcome of testing a suspect for one account's probability mark."""

    account: str
    probes: int
    groups: int
    #: The statistic: the suspect's residual on the keyed classes, summed over groups (0 expected by chance).
    statistic: float
    log2_p: float
    threshold_log2: float = DEFAULT_THRESHOLD_LOG2

    @property
    def claimed(self) -> bool:
        return self.probes > 0 and self.log2_p < self.threshold_log2

    def summary(self) -> str:
        verdict = "CLAIMED: trained on this account's answers" if self.claimed else "not claimed"
        return (f"account {self.account!r}: probability mark over {self.probes} probes in {self.groups} groups, "
                f"statistic {self.statistic:.2f}; p <= 2^{self.log2_p:.1f} (threshold 2^{self.threshold_log2:.0f}): "
                f"{verdict}")


class SuspectAnswers:
    """The part of the test that does not depend on the key, computed once for
    a suspect's answers (``owner`` and ``suspect``: ``(n, k)`` probabilities
    of the same probe inputs, in the same class order: the owner's model
    unmarked, and the suspect as it answers); :meth:`test` then costs
    little per account."""

    def __init__(self, owner: Any, suspect: Any) -> None:
        P, S = _pair(owner, suspect)
        self.probes, self.k = P.shape
        top = P.argmax(axis=1)
        self.tops = np.unique(top) if self.k >= 3 else np.zeros(0, dtype=np.int64)
        if len(self.tops) * self.k > _MAX_CELLS:
            raise ValueError(f"{len(self.tops)} groups of {self.k} classes: more than this test handles")
        self.shares = profile(self.k)
        if not len(self.tops):
            return
        residual = np.log(S + _DELTA) - np.log(P + _DELTA)
        sums = np.stack([residual[top == t].sum(axis=0) for t in self.tops])
        #: Each group's other classes, in order, and the suspect's centred residual on each.
        self.others = np.stack([np.delete(np.arange(self.k), t) for t in self.tops])
        self.values = np.take_along_axis(sums, self.others, axis=1)
        self.values -= self.values.mean(axis=1, keepdims=True)  # each group's draw has mean 0
        # Every ordered choice of each group, weighed as the mark weighs its classes.
        self.candidates = (self.values[:, _choices(self.k - 1, len(self.shares))] * self.shares).sum(axis=2)
        self.tail = _Tail(self.candidates)

    def test(self, key: bytes, *, account: str = "", threshold_log2: float = DEFAULT_THRESHOLD_LOG2) -> MarkTest:
        """Whether the suspect's answers carry the mark of ``key``."""
        if not len(self.tops):
            return MarkTest(account, self.probes, 0, 0.0, 0.0, threshold_log2)
        # The keyed choice of each group, as positions among its other classes (sorted: a search finds them).
        lifted = _lifted(key, self.k, self.tops)
        keyed = np.stack([np.searchsorted(self.others[g], row) for g, row in enumerate(lifted)])
        observed = float((np.take_along_axis(self.values, keyed, axis=1) * self.shares).sum())
        bound = min(_chernoff_log2(self.candidates, observed), self.tail.log2(observed))
        return MarkTest(account, self.probes, len(self.tops), observed, bound, threshold_log2)


def test(key: bytes, owner: Any, suspect: Any, *, account: str = "",
         threshold_log2: float = DEFAULT_THRESHOLD_LOG2) -> MarkTest:
    """Whether ``suspect``'s probabilities carry the mark of ``key`` (see :class:`SuspectAnswers`)."""
    return SuspectAnswers(owner, suspect).test(key, account=account, threshold_log2=threshold_log2)


@functools.lru_cache(maxsize=64)
def _choices(m: int, length: int) -> np.ndarray:
    """Every ordered choice of ``length`` distinct positions among ``m``: ``(count, length)``."""
    if length == 1:
        return np.arange(m, dtype=np.int64)[:, None]
    return np.array(list(itertools.permutations(range(m), length)), dtype=np.int64).reshape(-1, length)


def _pair(owner: Any, suspect: Any) -> tuple[np.ndarray, np.ndarray]:
    P = np.asarray(owner, dtype=np.float64)
    S = np.asarray(suspect, dtype=np.float64)
    if P.ndim != 2 or S.ndim != 2 or not P.size:
        raise ValueError(f"owner and suspect answers must be non-empty (n, k) matrices, not {P.shape} and {S.shape}")
    if P.shape != S.shape:
        raise ValueError(f"owner and suspect answers differ in shape: {P.shape} and {S.shape}")
    if not (np.isfinite(P).all() and np.isfinite(S).all()):
        raise ValueError("probabilities must be finite numbers")
    return np.clip(P, 0.0, 1.0), np.clip(S, 0.0, 1.0)


class _Tail:
    """``P(statistic >= x)`` for the statistic that sums one uniform draw from
    each row of ``candidates``, by convolution, each value first rounded up
    to a step of ``_BINS`` in the widest row (so the tail is bounded from
    above); no bound (0.0) beyond ``max_groups`` rows."""

    def __init__(self, candidates: np.ndarray, max_groups: int = 64) -> None:
        self.step = float((candidates.max(axis=1) - candidates.min(axis=1)).max()) if len(candidates) else 0.0
        self.step /= _BINS
        self.tails: np.ndarray | None = None
        self.offset, self.slack = 0, 0.0
        if not 0 < len(candidates) <= max_groups or self.step <= 0:
            return
        dist = np.ones(1)
        for row in candidates:
            steps = np.ceil(row / self.step).astype(np.int64)
            dist = np.convolve(dist, np.bincount(steps - steps.min()) / len(row))
            self.offset += int(steps.min())
        self.tails = np.cumsum(dist[::-1])[::-1]  # tails[i] = P(sum of steps >= offset + i)
        #: Slack for the observed sum's own rounding (it is added in another order than the rows).
        self.slack = 1e-9 * (len(candidates) + 1)

    def log2(self, observed: float) -> float:
        if self.tails is None or observed <= 0:
            return 0.0
        need = math.ceil(observed / self.step - self.slack) - self.offset
        if need <= 0:
            return 0.0
        tail = float(self.tails[need]) if need < len(self.tails) else 0.0
        return math.log2(tail) if tail > 0 else 0.0  # (rounding: no bound rather than a wrong one)


def _chernoff_log2(candidates: np.ndarray, observed: float) -> float:
    """log2 of ``min over λ ≥ 0 of exp(-λ·observed) · Π_g mean_c exp(λ·candidates[g, c])``:
    a bound on P(statistic ≥ observed) when each group's value is a uniform
    draw of its row, independently (the rows have mean 0)."""
    if observed <= 0 or not len(candidates):
        return 0.0
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    width = math.log(candidates.shape[1])

    def log_bound(lam: float) -> float:
        return float(-lam * observed + (logsumexp(lam * candidates, axis=1) - width).sum())

    scale = float(np.abs(candidates).max()) or 1.0
    best = minimize_scalar(log_bound, bounds=(0.0, 200.0 / scale), method="bounded", options={"xatol": 1e-6 / scale})
    return min(0.0, float(best.fun) / math.log(2.0))


def ranked(tests: Sequence[MarkTest], accounts: int) -> list[MarkTest]:
    """Tests of several accounts, most significant first, each p-value
    multiplied by ``accounts`` (the number tested: Bonferroni)."""
    extra = math.log2(max(1, accounts))
    return sorted((replace(t, log2_p=min(0.0, t.log2_p + extra)) for t in tests), key=lambda t: t.log2_p)
