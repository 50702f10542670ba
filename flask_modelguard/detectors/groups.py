"""Colluding accounts: groups whose queries together look like one thief's,
though each part alone is too small or too mild to flag. Framework-free.

A thief split over many accounts (a Sybil attack) keeps every part under the
per-account thresholds, but its parts share one query distribution: against
the reference (ADD's class Gaussians), they deviate *the same way*. So each
account becomes a vector of its evidence, per reference class and feature
(:func:`deviations`):

- the sum of its whitened deviations from the class mean, and
- the sum of its whitened squared deviations minus their expectation,

both from the class moments the state keeps. Under the reference an entry
of class ``c`` of an account with ``n_c`` inputs of that class is about
``N(0, n_c)``, and the vectors of independent accounts are independent; the
vectors of one thief's parts point the same way, so their sum grows like
``n`` while noise grows like ``√n``. For a set of accounts with summed vector
``S`` over ``N`` inputs, ``|S|²/N`` is a mixture of χ² variables (:func:`_z`),
hence the group's ``z``.

:class:`GroupSearch` grows groups greedily from the most agreeing pair
(agreement: the inner product of two vectors over its standard error, given
the other, for an independent account: about ``N(0, 1)`` for honest accounts), keeps only members that
agree with the rest of the group on their own (leave one out), and accepts a
group only when

- its ``z`` reaches ``group_z``, each member's agreement ``member_z``, and
- its members' states *merged* into one account cross ADD's calibrated
  threshold for an account of that size (``ratio >= bar``): the group is
  judged as the one account it would be.

Benign traffic rarely matches the reference exactly; the drift common to all
candidates (per entry, the median deviation per input of the accounts with
inputs of its class) is removed and each entry is scaled by its robust spread
among them, so a population-wide shift makes no group.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..state import AccountState
from ..stats import Moments, _triangle
from .add import CALIBRATION_SIZES, Reference, add_score

#: Whatever names an account (the guard's integer ids; any hashable value here).
AccountId = Any
#: The median of a χ² variable with one degree of freedom (robust scale of a standard normal's square).
_CHI2_MEDIAN = 0.4549
#: Candidate rows compared at once in the pair search (memory: block × candidates floats).
_BLOCK = 1024


@dataclass
class Group:
    """Accounts judged as one: who, how many inputs, and the evidence."""

    members: list[AccountId]
    queries: int
    distinct: int
    #: ADD's score of the merged state over its threshold at that size.
    ratio: float
    #: How far the members' summed deviation is beyond chance (standard units).
    z: float
    #: The weakest member's agreement with the rest of the group (standard units).
    agreement: float
    scores: dict[str, float] = field(default_factory=dict)
    #: What linked the members besides their queries ("" or "sharing a client").
    link: str = ""

    @property
    def reason(self) -> str:
        linked = f" {self.link}" if self.link else ""
        return (f"colluding group of {len(self.members)} accounts{linked}: ADD {self.ratio:.2f}x its threshold at "
                f"{self.distinct} inputs together, deviation z={self.z:.1f}, agreement >= {self.agreement:.1f}")


class _Whitener:
    """Per reference class: its mean and the inverse square root of its
    covariance (with a small ridge, so a flat feature does not explode)."""

    def __init__(self, reference: Reference, ridge: float = 1e-3) -> None:
        self.labels = sorted(reference.classes)
        self.dim = reference.classes[self.labels[0]].dim
        self.means, self.roots = {}, {}
        for label in self.labels:
            moments = reference.classes[label]
            cov = moments.cov()
            values, vectors = np.linalg.eigh(cov + np.eye(self.dim) * (ridge * max(np.trace(cov) / self.dim, 1e-12)))
            self.means[label] = moments.mean
            self.roots[label] = (vectors / np.sqrt(np.clip(values, 1e-12, None))) @ vectors.T

    @property
    def width(self) -> int:
        return 2 * self.dim * len(self.labels)

    def vector(self, state: AccountState) -> np.ndarray:
        """The account's deviation vector (see the module's docstring)."""
        out = np.zeros(self.width)
        state.flush()
        for i, label in enumerate(self.labels):
            moments = state.by_class.get(label)
            if moments is None or moments.n == 0 or moments.dim != self.dim:
                continue
            root, n = self.roots[label], moments.n
            shift = root @ (moments.mean - self.means[label])
            spread = root @ (moments.cov() * (n - 1)) @ root  # Σ over inputs of centred outer products, whitened
            at = 2 * self.dim * i
            out[at : at + self.dim] = n * shift
            out[at + self.dim : at + 2 * self.dim] = (np.diag(spread) + n * shift**2 - n) / np.sqrt(2.0)
        return out


def deviations(states: Mapping[AccountId, AccountState], reference: Reference) -> tuple[np.ndarray, np.ndarray]:
    """Each account's deviation vector (rows, in the order of ``states``) and
    its inputs per reference class (under the reference, an entry of class
    ``c`` has variance ``n_c``), with the candidates' common drift removed and
    each entry scaled by its robust spread (see the module's docstring)."""
    whitener = _Whitener(reference)
    V = np.array([whitener.vector(state) for state in states.values()]).reshape(len(states), whitener.width)
    C = np.array([[state.by_class[c].n if c in state.by_class else 0 for c in whitener.labels]
                  for state in states.values()], dtype=np.float64).reshape(len(states), len(whitener.labels))
    broken = ~np.isfinite(V).all(axis=1)  # (stored states are finite; never let one blind the rest)
    V[broken], C[broken] = 0.0, 0.0
    if len(V):
        n = np.repeat(C, 2 * whitener.dim, axis=1)  # each entry's expected variance (0: no input of its class)
        drift = _median_where(V / np.maximum(n, 1.0), n > 0, 0.0)  # over the accounts with inputs there
        V -= n * drift
        spread = np.sqrt(_median_where(V**2 / np.maximum(n, 1.0), n > 0, _CHI2_MEDIAN) / _CHI2_MEDIAN)
        V /= np.maximum(spread, 1.0)
    return V, C


def _median_where(X: np.ndarray, mask: np.ndarray, empty: float) -> np.ndarray:
    """Each column's median over the rows where ``mask`` holds (``empty`` where none does)."""
    out = np.full(X.shape[1], empty)
    for j in np.flatnonzero(mask.any(axis=0)):
        out[j] = np.median(X[mask[:, j], j])
    return out


@dataclass
class GroupSearch:
    """Finds colluding groups among accounts' states (see the module's docstring)."""

    #: The merged state's ADD score over its threshold that makes a group.
    bar: float = 1.0
    #: Least deviation z of a group; least agreement of each member beyond the
    #: best of the candidates over the growth steps by chance (about √(2 ln n·max_size)).
    group_z: float = 6.0
    member_z: float = 1.0
    min_size: int = 2
    max_size: int = 64
    max_groups: int = 8
    #: Members have between these many distinct inputs (more: judged alone; fewer: a few
    #: inputs alike, two honest users who sent the same digit, are no evidence).
    min_member_queries: int = 5
    max_member_queries: int = 1000
    #: Least distinct inputs of a group together (where ADD's thresholds are calibrated).
    min_group_queries: int = CALIBRATION_SIZES[0]
    #: Seed pairs grown per search at most (strongest first; each costs about 2 ms).
    max_attempts: int = 256
    #: Drop members whose leaving raises the merged state's ADD ratio (:meth:`_undiluted`).
    undilute: bool = True

    def find(self, states: Mapping[AccountId, AccountState], reference: Reference) -> list[Group]:
        """The groups among ``states``, strongest first (each account in one at
        most): over all candidates, then within each set of accounts that share
        a client (``AccountState.clients``), with the bar of the set's size."""
        if len(states) < self.min_size or not reference.thresholds:
            return []
        pool = _Pool(states, reference, self.min_member_queries, self.max_member_queries)
        groups = self._search(pool, np.ones(len(pool.ids), dtype=bool), "")
        for scope in _sharing_a_client(pool):
            if len(groups) < self.max_groups:
                groups += self._linked(pool, scope, "sharing a client")
        return sorted(groups, key=lambda g: -g.z)

    def _linked(self, pool: _Pool, scope: np.ndarray, link: str) -> list[Group]:
        """Accounts a link already groups: all of them, less those that do not
        agree with the rest beyond the bar of the set's size (honest users
        behind a thief's address must not join it); else a search among them."""
        linked = np.flatnonzero(pool.free & scope).tolist()
        bar = self.member_z + np.sqrt(2.0 * np.log(max(2, len(linked))))
        members = self._keep_agreeing(linked, pool, bar)
        group = self._judge(members, pool, link)
        if group is None:
            return self._search(pool, scope, link)
        pool.free[members] = False
        return [group]

    def _search(self, pool: _Pool, scope: np.ndarray, link: str) -> list[Group]:
        """Groups among the free accounts of ``scope`` (its members then no longer free)."""
        free = pool.free & scope
        bar = self.member_z + np.sqrt(2.0 * np.log(max(2, int(scope.sum())) * self.max_size))  # best of n·steps: ~√(2 ln n·s)
        groups: list[Group] = []
        tried = np.zeros(len(pool.ids), dtype=bool)  # in a group that failed: seeds no other
        for a, b in self._pairs(pool, free, bar)[: self.max_attempts]:
            if len(groups) >= self.max_groups:
                break
            if not (free[a] and free[b]) or (tried[a] and tried[b]):
                continue
            grown = self._grow([a, b], pool, free, bar)
            members = self._keep_agreeing(grown, pool, bar)
            group = self._judge(members, pool, link)
            if group is None:
                tried[grown] = True
            else:
                groups.append(group)
                free[members] = pool.free[members] = False
        return groups

    def _pairs(self, pool: _Pool, free: np.ndarray, bar: float) -> list[tuple[int, int]]:
        """Seeds: each free account with its most agreeing partner, where they
        agree beyond ``bar``, most agreeing first."""
        seeds: dict[tuple[int, int], float] = {}
        columns = np.flatnonzero(free)
        for start in range(0, len(columns), _BLOCK):
            rows = columns[start : start + _BLOCK]
            W, e = pool.W, pool.e
            given_b, given_a = e[rows] @ (W[columns] ** 2).T, (W[rows] ** 2) @ e[columns].T
            agree = _standardised(W[rows] @ W[columns].T, np.maximum(given_a, given_b))
            agree[np.arange(len(rows)), start + np.arange(len(rows))] = -np.inf
            best = agree.argmax(axis=1)
            for i, j in enumerate(best):
                if agree[i, j] >= bar:
                    a, b = sorted((int(rows[i]), int(columns[j])))
                    seeds[(a, b)] = float(agree[i, j])
        return sorted(seeds, key=lambda pair: -seeds[pair])

    def _grow(self, members: list[int], pool: _Pool, free: np.ndarray, bar: float) -> list[int]:
        """Add, one at a time, the free account agreeing most with the group,
        while it agrees beyond ``bar`` and raises the group's z."""
        members = list(members)
        V, n = pool.V, pool.n
        total, inputs = V[members].sum(axis=0), n[members].sum(axis=0)
        while len(members) < self.max_size:
            direction = pool.W[members].sum(axis=0)
            agree = _standardised(pool.W @ direction, pool.e @ direction**2)
            agree[~free] = -np.inf
            agree[members] = -np.inf
            best = int(agree.argmax())
            if agree[best] < bar or _z(total + V[best], inputs + n[best]) <= _z(total, inputs):
                break
            members.append(best)
            total, inputs = total + V[best], inputs + n[best]
        return members

    def _keep_agreeing(self, members: list[int], pool: _Pool, bar: float) -> list[int]:
        """Drop, weakest first, members that do not agree with the rest on their own
        (after those that dilute the group's evidence, with :attr:`undilute`)."""
        members = self._undiluted(members, pool) if self.undilute else list(members)
        while len(members) >= self.min_size:
            agree = _each_with_the_rest(pool, members)
            weakest = int(agree.argmin())
            if agree[weakest] >= bar:
                break
            members.pop(weakest)
        return members

    def _undiluted(self, members: list[int], pool: _Pool) -> list[int]:
        """Drop, one at a time, the member whose leaving raises the merged
        state's ADD ratio most, while one does: an account that only dilutes
        the group's evidence (or only brings it to a group's size) is not a
        part of the one thief the group is judged as."""
        members = list(members)
        while len(members) > self.min_size:
            ratios = [self._ratio([m for m in members if m != out], pool) for out in members]
            best = int(np.argmax(ratios))
            if ratios[best] <= self._ratio(members, pool):
                break
            members.pop(best)
        return members

    def _ratio(self, members: list[int], pool: _Pool) -> float:
        """The members' merged state's ADD score over its threshold (0: none); below
        the least calibrated size over the threshold there (interpolation holds it)."""
        merged = _merged_classes([pool.states[pool.ids[m]] for m in members])
        score, limit = add_score(merged, pool.reference), pool.reference.threshold(merged.distinct)
        return 0.0 if score is None or not limit else float(score / limit)

    def _judge(self, members: list[int], pool: _Pool, link: str) -> Group | None:
        """The group, if its members together pass every bar."""
        ids, states, reference, V, n = pool.ids, pool.states, pool.reference, pool.V, pool.n
        if len(members) < self.min_size or n[members].sum() < self.min_group_queries:
            return None
        z = _z(V[members].sum(axis=0), n[members].sum(axis=0))
        if z < self.group_z:
            return None
        merged = _merged_classes([states[ids[m]] for m in members])
        score, limit = add_score(merged, reference), reference.threshold(merged.distinct)
        if score is None or not limit or score / limit < self.bar:
            return None
        agreement = float(_each_with_the_rest(pool, members).min())
        queries = sum(states[ids[m]].queries for m in members)
        return Group([ids[m] for m in members], queries, merged.distinct, score / limit, z, agreement,
                     {"add": score, "add_threshold": limit}, link)


class _Pool:
    """The candidates of one search: their ids, states, deviation vectors
    (``V``), inputs per class (``n``), and which may still join a group
    (``free``). ``W`` is ``V`` with each account shrunk to the size chance
    gives it (``|W|² ≤ k·inputs``, ``k`` entries a class): an account that
    deviates a lot, in any direction, gets no more say in agreements than
    one that does not, so heavy-tailed honest accounts do not join groups."""

    def __init__(self, states: Mapping[AccountId, AccountState], reference: Reference, least: int,
                 most: int) -> None:
        self.ids, self.states, self.reference = list(states), states, reference
        self.V, self.n = deviations(states, reference)
        k = self.V.shape[1] // max(1, self.n.shape[1])
        #: Each entry's variance under chance: its class's inputs.
        self.e = np.repeat(self.n, k, axis=1)
        expected = np.maximum(self.e.sum(axis=1), 1.0)
        self.W = self.V / np.sqrt(np.maximum(1.0, (self.V**2).sum(axis=1) / expected))[:, None]
        self.free = np.array([least <= states[a].distinct <= most for a in self.ids], dtype=bool)
        self.free &= self.n.sum(axis=1) > 0


def _sharing_a_client(pool: _Pool) -> list[np.ndarray]:
    """Sets of free accounts linked by shared clients (directly or through
    others), as masks over the pool; only sets of two or more."""
    parent = list(range(len(pool.ids)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[int, int] = {}
    for i, account in enumerate(pool.ids):
        if pool.free[i]:
            for client in pool.states[account].clients.tolist():
                parent[root(i)] = root(first.setdefault(client, i))
    sets: dict[int, list[int]] = {}
    for i in range(len(pool.ids)):
        if pool.free[i] and pool.states[pool.ids[i]].clients.size:
            sets.setdefault(root(i), []).append(i)
    masks = []
    for members in sets.values():
        if len(members) >= 2:
            mask = np.zeros(len(pool.ids), dtype=bool)
            mask[members] = True
            masks.append(mask)
    return masks


def _merged_classes(states: list[AccountState]) -> AccountState:
    """The class moments of ``states`` pooled (all ADD reads; not the rest of a
    state), in one step per class: Chan's formula over every member at once."""
    merged = AccountState(states[0].dim, space=states[0].space)
    parts: dict[str, list[Moments]] = {}
    for state in states:
        state.flush()
        for label, moments in state.by_class.items():
            if moments.n:
                parts.setdefault(label, []).append(moments)
    for label, found in parts.items():
        n = np.array([m.n for m in found], dtype=np.float64)
        means = np.array([m.mean for m in found], dtype=np.float64)
        mean = n @ means / n.sum()
        rows, cols, _ = _triangle(found[0].dim)
        centred = means - mean
        m2 = np.sum([m.m2 for m in found], axis=0) + (n[:, None] * centred[:, rows] * centred[:, cols]).sum(axis=0)
        merged.by_class[label] = Moments(found[0].dim, False, int(n.sum()), mean, m2)
    return merged


def _z(total: np.ndarray, inputs: np.ndarray) -> float:
    """How far a summed deviation vector is beyond chance, in standard units:
    with ``N_c`` inputs of class ``c`` (``inputs``), ``|S|²/N`` is a mixture
    Σ_c (N_c/N)·χ²_k with ``k`` entries a class, of mean ``k`` and variance
    ``2k·Σ_c (N_c/N)²``."""
    N = max(float(inputs.sum()), 1.0)
    k = len(total) // max(1, len(inputs))
    share = inputs / N
    return float((total @ total / N - k) / np.sqrt(2.0 * k * max(float(share @ share), 1e-12)))


def _standardised(inner: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Inner products ``w·s`` of shrunk deviation vectors over their standard
    error for an account independent of ``s``, given ``s`` (``Σ_j e_j·s_j²``,
    ``e_j`` the entry's variance under chance): about N(0, 1) for an honest
    account, however strong the group it is compared with; 0 where they share
    no class."""
    return np.asarray(np.where(variance > 0, inner / np.sqrt(np.maximum(variance, 1e-12)), 0.0))


def _each_with_the_rest(pool: _Pool, members: list[int]) -> np.ndarray:
    """Each member's agreement with the sum of the others."""
    W, e = pool.W[members], pool.e[members]
    rest = W.sum(axis=0)[None, :] - W
    return _standardised((W * rest).sum(axis=1), (e * rest**2).sum(axis=1))
