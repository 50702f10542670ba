"""One account as a process holds it for the detectors: the merged state as
storage had it, the deltas not merged yet, PRADA, its recent inputs and its
window of recent queries. Framework-free."""

from __future__ import annotations

import numpy as np

from .detectors.prada import Prada
from .detectors.window import Window
from .state import AccountState


class RecentInputs:
    """The last ``size`` distinct fingerprints of an account (a ring of 64-bit
    ints: 8 bytes each, grown by doubling): a query seen among them is a repeat."""

    __slots__ = ("ring", "count", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.ring = np.zeros(min(size, 32), dtype=np.uint64)
        self.count = 0

    def add(self, fingerprint: int) -> bool:
        """Remember ``fingerprint``; False when it was already there."""
        ring = self.ring
        if (ring[: min(self.count, len(ring))] == fingerprint).any():
            return False
        if self.count == len(ring) < self.size:
            ring = self.ring = np.concatenate([ring, np.zeros(min(len(ring), self.size - len(ring)), dtype=np.uint64)])
        ring[self.count % len(ring)] = fingerprint
        self.count += 1
        return True


class ResidentAccount:
    """One account in memory: the merged state as storage had it (``base``),
    what this process saw since (``delta``, None until then), PRADA, the
    recent fingerprints and the window. The state the detectors read is
    ``base`` merged with ``delta``, built when an evaluation needs it."""

    __slots__ = ("base", "delta", "errors", "evaluated", "merging", "prada", "seen", "since", "stepped", "window")

    def __init__(self, base: AccountState, prada: Prada, max_seen: int) -> None:
        self.base = base.compact()
        self.delta: AccountState | None = None
        self.merging: AccountState | None = None  # a delta being merged into storage right now
        self.prada = prada
        self.seen = RecentInputs(max_seen)
        self.since = 0  # queries since the last evaluation
        self.evaluated = False  # in this process: the first evaluation comes at min_queries
        self.window = Window()  # the last queries: windowed entropy, uniqueness, rate
        self.errors = 0  # evaluations that failed (each one a verdict of its own)
        self.stepped = False  # sign steps reached their threshold (evaluated at once, not at the next due)

    @property
    def queries(self) -> int:
        return self.base.queries + sum(d.queries for d in (self.merging, self.delta) if d is not None)

    def view(self) -> AccountState:
        """Everything known of the account (a new object: base and deltas stay apart)."""
        parts = [d for d in (self.merging, self.delta) if d is not None and d.queries]
        if not parts:
            return self.base
        view = self.base.copy()
        for part in parts:
            view.merge(part)
        return view

    def memory_bytes(self) -> int:
        return (self.base.memory_bytes() + (self.delta.memory_bytes() if self.delta is not None else 0)
                + self.prada.memory_bytes() + self.seen.ring.nbytes + self.window.nbytes())
