"""The answer a transform works on, keyed randomness, and the transform base class."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..exc import InvalidValue
from ..probmark import account_key

_EPS = 1e-12
#: The transforms whose keyed wrong labels are evidence of ownership.
MARK_KINDS = ("watermark", "poison", "misinformation")


@dataclass(frozen=True)
class Answer:
    """A batch of answers as the client will see them."""

    #: (n, k) probabilities (or scores).
    probs: np.ndarray
    #: (n,) served class indices.
    labels: np.ndarray
    #: (n, k) mask of the entries sent, or None for all of them.
    keep: np.ndarray | None = None
    #: Send labels only.
    label_only: bool = False
    #: (n,) instances whose answer is a watermark (deliberately wrong).
    watermarked: np.ndarray | None = None
    #: (n,) the deliberately wrong label a keyed choice gave each instance (-1 elsewhere).
    mark_labels: np.ndarray | None = None
    #: (n, k) the distribution that keyed choice was drawn from (the null of the ownership test).
    mark_dist: np.ndarray | None = None
    #: (n,) which transform chose it: an index into :data:`MARK_KINDS`.
    mark_kinds: np.ndarray | None = None

    def but(self, **changes: Any) -> Answer:
        """A copy with some fields changed (``dataclasses.replace`` costs
        several µs per call, which the request path notices)."""
        values: dict[str, Any] = {
            "probs": self.probs, "labels": self.labels, "keep": self.keep,
            "label_only": self.label_only, "watermarked": self.watermarked,
            "mark_labels": self.mark_labels, "mark_dist": self.mark_dist, "mark_kinds": self.mark_kinds,
        }
        values.update(changes)
        return Answer(**values)

    def marked(self, rows: np.ndarray, labels: np.ndarray, dist: np.ndarray, kind: str) -> Answer:
        """Record that ``rows`` now carry ``labels``, drawn (keyed) from ``dist``
        by the transform ``kind``; other rows keep the marks they had."""
        n, k = self.probs.shape
        mark = np.full(n, -1, dtype=np.int64) if self.mark_labels is None else self.mark_labels.copy()
        where = np.zeros((n, k)) if self.mark_dist is None else self.mark_dist.copy()
        kinds = np.zeros(n, dtype=np.int8) if self.mark_kinds is None else self.mark_kinds.copy()
        mark[rows] = labels[rows]
        where[rows] = dist[rows]
        kinds[rows] = MARK_KINDS.index(kind)
        return self.but(mark_labels=mark, mark_dist=where, mark_kinds=kinds)

    def unmarked(self, rows: np.ndarray) -> Answer:
        """``rows`` no longer carry a keyed wrong label (a later step moved their label)."""
        if self.mark_labels is None or not rows.any():
            return self
        mark = self.mark_labels.copy()
        mark[rows] = -1
        return self.but(mark_labels=mark)

    @classmethod
    def of(cls, probs: Any) -> Answer:
        p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
        return cls(p, p.argmax(axis=1))


class KeyedRandom:
    """Uniform numbers in (0, 1) derived from a keyed hash per instance.

    ``seeds[i]`` identifies instance ``i`` (secret, account and input
    fingerprint hashed together); ``uniform(purpose, k)`` is a pure function of
    the seed, the purpose and k, so answers are reproducible.
    """

    def __init__(self, seeds: Sequence[bytes], score: float = 0.0, account_key: bytes | None = None) -> None:
        self.seeds = list(seeds)
        #: The account's malicious score in [0, 1] (poisoning may grow with it).
        self.score = score
        self._account_key = account_key
        self._account: tuple[bytes, int | str] | None = None

    @property
    def account_key(self) -> bytes | None:
        """The account's own key (the probability mark's), or None when not known;
        derived on first use (most requests never need it)."""
        if self._account_key is None and self._account is not None:
            self._account_key = account_key(*self._account)
        return self._account_key

    @classmethod
    def for_inputs(cls, key: bytes, account: int | str, fingerprints: Sequence[str], score: float = 0.0) -> KeyedRandom:
        prefix = f"{account}:".encode()
        rng = cls(
            [hashlib.blake2b(prefix + fp.encode(), key=key[:64], digest_size=32).digest() for fp in fingerprints],
            score,
        )
        rng._account = (key, account)
        return rng

    def uniform(self, purpose: str, k: int) -> np.ndarray:
        """(n, k) uniforms in (0, 1), a pure function of (seed, purpose, k)."""
        tag = purpose.encode()
        blocks = -(-k // 16)  # 16 uint32 per 64-byte digest
        out = np.empty((len(self.seeds), blocks * 16), dtype=np.float64)
        for i, seed in enumerate(self.seeds):
            data = b"".join(
                hashlib.blake2b(tag + bytes((b,)), key=seed, digest_size=64).digest() for b in range(blocks)
            )
            out[i] = np.frombuffer(data, dtype="<u4")
        return (out[:, :k] + 0.5) / 4294967296.0

    def first(self, purpose: str) -> list[float]:
        """``uniform(purpose, 1)[:, 0]`` as Python floats, without numpy (the
        request path's fast check)."""
        tag = purpose.encode() + b"\x00"
        return [
            (int.from_bytes(hashlib.blake2b(tag, key=seed, digest_size=64).digest()[:4], "little") + 0.5)
            / 4294967296.0
            for seed in self.seeds
        ]

    def normal(self, purpose: str, k: int) -> np.ndarray:
        u = self.uniform(purpose, 2 * k)  # Box-Muller from one stream
        return np.asarray(np.sqrt(-2.0 * np.log(u[:, :k])) * np.cos(2.0 * np.pi * u[:, k:]))

    def laplace(self, purpose: str, k: int) -> np.ndarray:
        u = self.uniform(purpose, k) - 0.5
        return -np.sign(u) * np.log1p(-2.0 * np.abs(u))


def _number(value: Any, name: str, low: float = 0.0, high: float = float("inf")) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise InvalidValue(f"{name} must be a number in [{low}, {high}], not {value!r}")


def _integer(value: Any, name: str, low: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidValue(f"{name} must be an integer >= {low}, not {value!r}")


def renormalise(p: np.ndarray) -> np.ndarray:
    """Rows scaled to sum 1; an all-zero row becomes uniform."""
    p = np.maximum(p, 0.0)
    total = p.sum(axis=1, keepdims=True)
    if (total > _EPS).all():
        p /= total
        return p
    return np.where(total > _EPS, p / np.where(total > _EPS, total, 1.0), 1.0 / p.shape[1])


def _restore_argmax(p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Swap entries so that ``labels`` are the row maxima again (the multiset of
    values in each row is unchanged, so a distribution stays one)."""
    top = p.argmax(axis=1)
    moved = top != labels
    if not moved.any():
        return p
    p = p.copy()
    r, a, b = np.flatnonzero(moved), labels[moved], top[moved]
    high, low = p[r, b].copy(), p[r, a].copy()
    p[r, a], p[r, b] = high, low
    return p


class Transform:
    """Base class: ``transform(answer, rng) -> answer``."""

    #: Name used in strings (``"round(2)"``).
    name: ClassVar[str] = ""
    #: Whether the served labels are kept (property tests rely on it).
    keeps_argmax: ClassVar[bool] = True

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:  # pragma: no cover
        raise NotImplementedError

    def skips(self, rng: KeyedRandom) -> bool:
        """True when this transform would leave every answer of ``rng``'s
        inputs unchanged (lets the request path skip reading the answer)."""
        return False
