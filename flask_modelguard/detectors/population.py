"""ADD without owner data: a reference fitted on the pooled traffic of all accounts. Framework-free.

ADD (:mod:`.add`) compares each account with class-wise Gaussians of
known-good inputs. Where the owner has none, most accounts are benign, so the
pooled recent queries of all accounts approximate the natural distribution:

- :class:`PopulationSample` keeps a bounded sample of recent rows (class
  feature vector, label, account), in which no account holds more than
  ``max_share`` of the capacity, and when full the account holding most rows
  gives up its oldest one (so a heavy sender cannot push others out);
- :func:`fit_population` fits a :class:`~.add.Reference` on it, with every
  account capped at ``max_share`` of the rows used, then drops the ``trim``
  share of accounts most discrepant from that first fit and refits (with
  :meth:`~.add.Reference.fit`'s calibration holdout) on the rest.

Rows are stored as :func:`~flask_modelguard.state.class_features` (what ADD
compares; at most 16 floats a row, in float32). The sample is robust to
thieves that are a minority of the *accounts*: when more than ``trim`` of the
contributing accounts are thieves of one kind, some stay in the reference.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..state import AccountState, class_features, label_key
from ..stats import Moments
from .add import Reference, add_score

AccountId = Hashable
#: Accounts drawn from the pooled rows per account size, for the median score that ranks accounts.
RANK_DRAWS = 7


class PopulationSample:
    """A bounded sample of the recent queries of every account.

    Each account keeps its latest rows, at most ``capacity * max_share`` of
    them; once ``capacity`` rows are held, a new row replaces the oldest row of
    the account holding the most. Merges and JSON round trips keep the rows
    exactly (float32)."""

    def __init__(self, capacity: int = 4000, max_share: float = 1 / 8, *, space: str = "") -> None:
        if capacity < 1 or not 0.0 < max_share <= 1.0:
            raise ValueError("capacity must be positive and max_share in (0, 1]")
        self.capacity = int(capacity)
        self.max_share = float(max_share)
        #: Most rows one account may hold.
        self.cap = max(1, int(self.capacity * self.max_share))
        #: The feature space of the rows (as ``AccountState.space``); given to the fitted reference.
        self.space = space
        #: Dimension of the features given to :meth:`add` (None before the first row).
        self.dim: int | None = None
        self._rows = np.zeros((0, 0), dtype=np.float32)
        self._owner = np.zeros(0, dtype=np.int32)  # account slot of each row
        self._label = np.zeros(0, dtype=np.int32)  # index into self._classes
        self._seq = np.zeros(0, dtype=np.int64)  # arrival order
        self._size = 0
        self._next = 0
        self._classes: list[str] = []
        self._class_code: dict[str, int] = {}
        self._ids: list[AccountId | None] = []  # account slot -> id (None: free slot)
        self._slot: dict[AccountId, int] = {}
        self._held = np.zeros(0, dtype=np.int64)  # rows held per account slot (grown by doubling)
        self._queues: list[deque[int]] = []  # per account slot, its row indices oldest first
        self._free: list[int] = []

    # -- building -----------------------------------------------------------------

    def add(self, account_id: AccountId, features: np.ndarray, labels: Sequence[Any]) -> PopulationSample:
        """Add an account's queries: ``features`` (n, dim) and the model's labels."""
        X = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if len(X) != len(labels):
            raise ValueError("features and labels differ in length")
        if not len(labels):
            return self
        if self.dim is None:
            self._allocate(X.shape[1], class_features(X[:1]).shape[1])
        elif X.shape[1] != self.dim:
            raise ValueError(f"expected {self.dim} features, got {X.shape[1]}")
        if len(X) > self.cap:  # only the latest rows could stay
            X, labels = X[-self.cap :], labels[-self.cap :]
        self._insert(account_id, class_features(X).astype(np.float32), [label_key(label) for label in labels])
        return self

    def merge(self, other: PopulationSample) -> PopulationSample:
        """Add the rows of ``other`` (each account's in their order), as if its
        traffic had come after this sample's. Needs the same dimension and space."""
        if other.dim is None:
            return self
        if (self.space and other.space and self.space != other.space) or (self.dim not in (None, other.dim)):
            raise ValueError("cannot merge samples of different feature spaces")
        if self.dim is None:
            self._allocate(other.dim, other._rows.shape[1])
        self.space = self.space or other.space
        order = np.argsort(other._seq[: other._size], kind="stable")
        owners = other._owner[order]
        for slot in dict.fromkeys(owners.tolist()):  # accounts in order of their oldest row
            rows = order[owners == slot]
            self._insert(other._ids[slot], other._rows[rows], [other._classes[c] for c in other._label[rows]])
        return self

    def _allocate(self, dim: int, width: int) -> None:
        self.dim = dim
        self._rows = np.zeros((self.capacity, width), dtype=np.float32)
        self._owner = np.zeros(self.capacity, dtype=np.int32)
        self._label = np.zeros(self.capacity, dtype=np.int32)
        self._seq = np.zeros(self.capacity, dtype=np.int64)

    def _insert(self, account_id: AccountId, Z: np.ndarray, names: Sequence[str]) -> None:
        slot = self._account(account_id)
        codes = [self._code(name) for name in names]
        places = [self._place(slot) for _ in codes]
        if len(places) == 1:  # the common case, one input a request: scalar writes are cheapest
            i = places[0]
            self._rows[i], self._owner[i], self._label[i], self._seq[i] = Z[0], slot, codes[0], self._next
        else:
            last = {i: k for k, i in enumerate(places)}  # a place reused within the batch: the later row wins
            idx, pos = np.fromiter(last, np.int64, len(last)), np.fromiter(last.values(), np.int64, len(last))
            self._rows[idx] = Z[pos]
            self._owner[idx] = slot
            self._label[idx] = np.asarray(codes)[pos]
            self._seq[idx] = pos + self._next
        self._next += len(codes)

    def _place(self, slot: int) -> int:
        """The row index for a new row of account ``slot``, evicting the oldest
        row of the account itself (at its cap) or of the largest holder (when full)."""
        held = self._held
        if held[slot] < self.cap and self._size < self.capacity:
            i = self._size
            self._size += 1
        else:
            victim = slot if held[slot] >= self.cap else int(np.argmax(held))
            i = self._queues[victim].popleft()
            held[victim] -= 1
            if victim != slot and not held[victim]:
                self._release(victim)
        self._queues[slot].append(i)
        held[slot] += 1
        return i

    def _account(self, account_id: AccountId) -> int:
        slot = self._slot.get(account_id)
        if slot is None:
            if self._free:
                slot = self._free.pop()
                self._ids[slot] = account_id
            else:
                slot = len(self._ids)
                self._ids.append(account_id)
                self._queues.append(deque())
                if slot >= len(self._held):
                    self._held = np.concatenate((self._held, np.zeros(max(8, slot), dtype=np.int64)))
            self._slot[account_id] = slot
        return slot

    def _release(self, slot: int) -> None:
        del self._slot[self._ids[slot]]
        self._ids[slot] = None
        self._free.append(slot)

    def _code(self, name: str) -> int:
        code = self._class_code.get(name)
        if code is None:
            code = self._class_code[name] = len(self._classes)
            self._classes.append(name)
        return code

    # -- reading ------------------------------------------------------------------

    def __len__(self) -> int:
        return self._size

    @property
    def accounts(self) -> int:
        """Distinct accounts holding rows."""
        return len(self._slot)

    def counts(self) -> dict[AccountId, int]:
        """Rows held per account."""
        return {account: int(self._held[slot]) for account, slot in self._slot.items()}

    def rows(self) -> tuple[np.ndarray, list[str], list[AccountId]]:
        """Class features (n, width) float32, labels and account of every row, oldest first."""
        order = np.argsort(self._seq[: self._size], kind="stable")
        return (self._rows[order].copy(), [self._classes[c] for c in self._label[order]],
                [self._ids[s] for s in self._owner[order]])

    def nbytes(self) -> int:
        """Approximate bytes held: the row arrays, 16 bytes a row for the
        per-account queues and 100 an account or label for the tables."""
        arrays = self._rows.nbytes + self._owner.nbytes + self._label.nbytes + self._seq.nbytes
        return arrays + 16 * self._size + 100 * (len(self._slot) + len(self._classes))

    # -- serialisation ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (account ids must be JSON values: str or int)."""
        n = self._size
        live = sorted(set(self._owner[:n].tolist()))
        compact = {slot: i for i, slot in enumerate(live)}
        return {
            "capacity": self.capacity, "max_share": self.max_share, "space": self.space, "dim": self.dim,
            "width": int(self._rows.shape[1]) if self.dim is not None else None,
            "classes": list(self._classes), "accounts": [self._ids[s] for s in live],
            "rows": self._rows[:n].tolist(), "label": self._label[:n].tolist(),
            "owner": [compact[s] for s in self._owner[:n].tolist()], "seq": self._seq[:n].tolist(),
            "next": self._next,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PopulationSample:
        sample = cls(int(data["capacity"]), float(data["max_share"]), space=str(data.get("space") or ""))
        if data.get("dim") is None:
            return sample
        n = len(data["rows"])
        if n > sample.capacity or not len(data["label"]) == len(data["owner"]) == len(data["seq"]) == n:
            raise ValueError("inconsistent population sample")
        sample._allocate(int(data["dim"]), int(data["width"]))
        if n:
            sample._rows[:n] = np.asarray(data["rows"], dtype=np.float32).reshape(n, -1)
        sample._label[:n] = data["label"]
        sample._owner[:n] = data["owner"]
        sample._seq[:n] = data["seq"]
        sample._size, sample._next = n, int(data["next"])
        sample._classes = [str(c) for c in data["classes"]]
        sample._class_code = {c: i for i, c in enumerate(sample._classes)}
        sample._ids = list(data["accounts"])
        sample._slot = {account: i for i, account in enumerate(sample._ids)}
        sample._held = np.bincount(sample._owner[:n], minlength=len(sample._ids)).astype(np.int64)
        sample._queues = [deque() for _ in sample._ids]
        for i in np.argsort(sample._seq[:n], kind="stable").tolist():
            sample._queues[sample._owner[i]].append(i)
        return sample


# -- fitting --------------------------------------------------------------------------


@dataclass
class PopulationFit:
    """The outcome of :func:`fit_population`: a reference, or why there is none."""

    reference: Reference | None
    #: Why there is no reference ("" when there is one).
    reason: str = ""
    #: Accounts and rows the first fit used.
    accounts: int = 0
    rows: int = 0
    #: Accounts left out as the most discrepant, most discrepant first, with
    #: their ADD score / median score of pooled accounts of their size.
    trimmed: list[tuple[AccountId, float]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.reference is not None


def fit_population(
    sample: PopulationSample,
    *,
    min_accounts: int = 8,
    min_rows: int = 400,
    trim: float = 0.25,
    seed: int = 0,
    **calibrate_options: Any,
) -> PopulationFit:
    """An ADD reference from the sample: rows balanced so no account gives more
    than ``sample.max_share`` of them, the ``trim`` share of accounts most
    discrepant from a first fit on all of them dropped, and
    :meth:`Reference.fit` (class Gaussians and calibrated thresholds) on the
    rest. ``calibrate_options`` go to :meth:`Reference.calibrate`."""
    if sample.accounts < min_accounts:
        return PopulationFit(None, f"{sample.accounts} accounts in the sample, {min_accounts} needed",
                             sample.accounts, len(sample))
    if len(sample) < min_rows:
        return PopulationFit(None, f"{len(sample)} rows in the sample, {min_rows} needed",
                             sample.accounts, len(sample))
    Z, labels, owners = sample.rows()
    use = _balanced(owners, sample.max_share)
    Z, labels, owners = Z[use], [labels[i] for i in use], [owners[i] for i in use]
    fit = PopulationFit(None, "", len(set(owners)), len(use))
    keep = np.ones(len(use), dtype=bool)
    if trim > 0:  # (repeating rank-and-drop on the kept rows, as FAST-MCD does, gained nothing measured)
        fit.trimmed = _rank(Z, labels, owners, seed)[: int(trim * fit.accounts)]
        dropped = {account for account, _ in fit.trimmed}
        keep = np.asarray([account not in dropped for account in owners])
    try:
        reference = Reference.fit(Z[keep], [labels[i] for i in np.flatnonzero(keep)], seed=seed, **calibrate_options)
    except ValueError as exc:
        fit.reason = str(exc)
        return fit
    reference.space = sample.space
    fit.reference = reference
    return fit


def _balanced(owners: Sequence[AccountId], max_share: float) -> np.ndarray:
    """Indices of the rows to use (oldest first): each account's latest ``c``,
    with the largest ``c`` such that no account gives more than ``max_share``
    of the rows (water-filling; all rows when there are too few accounts)."""
    codes: dict[AccountId, int] = {}
    inverse = np.asarray([codes.setdefault(o, len(codes)) for o in owners], dtype=np.int64)
    held = np.bincount(inverse, minlength=len(codes))
    if max_share >= 1.0 or len(codes) * max_share <= 1.0:
        return np.arange(len(owners))
    lo, hi = 1, int(held.max())  # c <= share * sum(min(held, c)) holds on an interval from 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if mid <= max_share * np.minimum(held, mid).sum() else (lo, mid - 1)
    rank_from_end = np.empty(len(owners), dtype=np.int64)  # 0 for an account's latest row
    seen = np.zeros(len(codes), dtype=np.int64)
    for i in range(len(owners) - 1, -1, -1):
        rank_from_end[i] = seen[inverse[i]]
        seen[inverse[i]] += 1
    return np.flatnonzero(rank_from_end < lo)


def _rank(Z: np.ndarray, labels: list[str], owners: list[AccountId], seed: int) -> list[tuple[AccountId, float]]:
    """Accounts by ADD score against a fit on all rows, over the median score
    of ``RANK_DRAWS`` accounts of the same size drawn from all rows (so that
    small and large accounts compare), highest first; accounts without a
    score are left out."""
    names = np.asarray(labels)
    first = Reference.fit(Z, labels, calibration=0)
    rng = np.random.default_rng(seed)
    baselines: dict[int, float | None] = {}

    def baseline(n: int) -> float | None:
        size = int(float(f"{n:.2g}"))  # two significant digits: few sizes to simulate
        if size not in baselines:
            scores = [add_score(_state(Z[idx], names[idx]), first)
                      for idx in (rng.integers(0, len(Z), size) for _ in range(RANK_DRAWS))]
            found = [s for s in scores if s is not None]
            baselines[size] = float(np.median(found)) if found else None
        return baselines[size]

    by_account: dict[AccountId, list[int]] = {}
    for i, account in enumerate(owners):
        by_account.setdefault(account, []).append(i)
    ranked = []
    for account, idx in by_account.items():
        score, limit = add_score(_state(Z[idx], names[idx]), first), baseline(len(idx))
        if score is not None and limit:
            ranked.append((account, score / limit))
    ranked.sort(key=lambda item: -item[1])
    return ranked


def _state(Z: np.ndarray, names: np.ndarray) -> AccountState:
    """An account state holding only the class moments of rows ``Z`` (what ADD reads)."""
    state = AccountState(Z.shape[1])
    for name in np.unique(names):
        state.by_class[str(name)] = Moments(Z.shape[1]).update(Z[names == name])
    return state
