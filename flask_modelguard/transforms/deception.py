"""Deliberately wrong answers, keyed and deterministic per (account, input):
random poisoning and misinformation for flagged accounts, watermark answers
for everyone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Answer, KeyedRandom, Transform, _number, _restore_argmax


def _redeal(p: np.ndarray, wrong: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Each row's own values re-dealt: the top one to class ``wrong[i]``, the
    rest to the remaining classes in the row's keyed ``order`` (so the true
    class sits at a random rank, not at a tell-tale second place)."""
    n, k = p.shape
    values = -np.sort(-p, axis=1)
    others = order[order != wrong[:, None]].reshape(n, k - 1)
    q = np.empty_like(p)
    rows = np.arange(n)
    q[rows, wrong] = values[:, 0]
    q[rows[:, None], others] = values[:, 1:]
    return q


def _keyed_order(rng: KeyedRandom, purpose: str, k: int) -> np.ndarray:
    return np.argsort(rng.uniform(purpose, k), axis=1)


def _others(labels: np.ndarray, k: int) -> np.ndarray:
    """(n, k) the uniform distribution over the classes other than ``labels``."""
    dist = np.ones((len(labels), k))
    dist[np.arange(len(labels)), labels] = 0.0
    return dist / (k - 1)


@dataclass(frozen=True)
class RandomPoison(Transform):
    """D-ADD-style poisoning: each answer is replaced, with probability
    ``p + (p_max - p) * score``, by a random one: the answer's own values in
    a keyed random order, so the served class is uniformly random while the
    vector's entropy and top confidence are the model's (a Dirichlet draw, as
    in D-ADD, would stand out from honest answers: no tells): the top value
    goes to a class other than the model's, uniformly, the others to the
    remaining classes in a keyed order. Meant for flagged accounts only."""

    p: float = 1.0
    p_max: float | None = None
    name: ClassVar[str] = "poison"
    keeps_argmax: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _number(self.p, "poison p", 0.0, 1.0)
        if self.p_max is not None:
            _number(self.p_max, "poison p_max", 0.0, 1.0)

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:
        n, k = answer.probs.shape
        rate = self.p if self.p_max is None else self.p + (self.p_max - self.p) * rng.score
        hit = rng.uniform("poison/select", 1)[:, 0] < rate
        if not hit.any():
            return answer
        # A class other than the model's, uniformly, takes the top value.
        wrong = (answer.labels + 1 + np.minimum((rng.uniform("poison/vector", 1)[:, 0] * (k - 1)).astype(np.int64),
                                                k - 2)) % k
        redealt = _redeal(answer.probs, wrong, _keyed_order(rng, "poison/order", k))
        probs = np.where(hit[:, None], redealt, answer.probs)
        labels = np.where(hit, wrong, answer.labels)
        return answer.but(probs=probs, labels=labels).marked(hit, labels, _others(answer.labels, k), "poison")


@dataclass(frozen=True)
class Misinformation(Transform):
    """Wrong but plausible answers, in the spirit of Adaptive Misinformation
    (Kariyappa and Qureshi 2020). The answer's own values are re-dealt: the
    top value goes to a wrong class drawn (keyed per account and input) in
    proportion to the model's probabilities raised to ``plausibility`` (1:
    usually the runner-up; 0: any wrong class alike; the default ½ is in
    between: a runner-up still leaks the model's ranking to a clone, which
    measured 0.34 fidelity from uniform-noise queries at 1, 0.24 at ½, 0.03
    at 0); the
    other values go to the remaining classes in a keyed random order, so the
    true class sits at a random rank, not at a tell-tale zero or second place.
    The result is blended with the true answer, ``(1 - a) p + a q``, with
    ``a = strength`` (grown towards 1 by the score when ``adaptive``); above
    about ½ the served label is wrong. Meant for flagged accounts only."""

    strength: float = 1.0
    adaptive: bool = False
    plausibility: float = 0.5
    name: ClassVar[str] = "misinformation"
    keeps_argmax: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _number(self.strength, "misinformation strength", 0.0, 1.0)
        _number(self.plausibility, "misinformation plausibility", 0.0, 1.0)

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:
        p = answer.probs
        n, k = p.shape
        if k < 2:
            return answer
        # The wrong class: a keyed draw among the others, weighted by the model
        # (a small floor keeps classes with zero mass possible).
        weights = (np.clip(p, 0.0, None) + 1e-3) ** self.plausibility
        weights[np.arange(n), answer.labels] = 0.0
        dist = weights / weights.sum(axis=1, keepdims=True)
        wrong = np.minimum((np.cumsum(dist, axis=1) < rng.uniform("misinformation/class", 1)).sum(axis=1), k - 1)
        order = _keyed_order(rng, "misinformation/order", k)
        a = self.strength
        if self.adaptive:
            a = a + (1.0 - a) * rng.score
        out = (1.0 - a) * p + a * _redeal(p, wrong, order)
        labels = out.argmax(axis=1)
        # Evidence: the rows served the drawn class, with the chance of each
        # class among those that would have been served had it been drawn.
        dist = dist * _served_if_drawn(p, order, a)
        moved = labels != answer.labels
        return (answer.but(probs=out, labels=labels).unmarked(moved & (labels != wrong))
                .marked(moved & (labels == wrong), wrong, dist, "misinformation"))


def _served_if_drawn(p: np.ndarray, order: np.ndarray, a: float) -> np.ndarray:
    """(n, k): whether class c would be the served label had it been drawn."""
    n, k = p.shape
    wins = np.empty((n, k), dtype=bool)
    for c in range(k):
        drawn = np.full(n, c)
        wins[:, c] = ((1.0 - a) * p + a * _redeal(p, drawn, order)).argmax(axis=1) == c
    return wins


@dataclass(frozen=True)
class Watermark(Transform):
    """DAWN-style watermark answers (Szyller et al. 2021): a keyed hash of the
    account and input selects about ``fraction`` of the inputs; for them the
    served label is a keyed choice among the other classes, and its probability
    swaps places with the top one (a matching, confident-looking vector). The
    same input from the same account is always marked, or never, at a given rate.

    With ``raised``, the rate rises with the account's malicious score: from
    ``fraction`` at ``rise_from`` to ``raised`` at ``rise_to`` (the flag
    threshold), linearly. The inputs marked at a lower rate stay marked at a
    higher one (the same keyed draw, a higher bar)."""

    fraction: float = 0.0025
    raised: float | None = None
    rise_from: float = 0.2
    rise_to: float = 0.5
    name: ClassVar[str] = "watermark"
    keeps_argmax: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _number(self.fraction, "watermark fraction", 0.0, 1.0)
        if self.raised is not None:
            _number(self.raised, "raised watermark fraction", self.fraction, 1.0)
        _number(self.rise_from, "watermark rise_from", 0.0, 1.0)
        _number(self.rise_to, "watermark rise_to", self.rise_from, 1.0)

    def rate(self, score: float) -> float:
        """The fraction of an account's inputs marked at malicious ``score``."""
        if self.raised is None or score <= self.rise_from:
            return self.fraction
        if score >= self.rise_to:
            return self.raised
        return self.fraction + (self.raised - self.fraction) * (score - self.rise_from) / (self.rise_to - self.rise_from)

    def skips(self, rng: KeyedRandom) -> bool:
        rate = self.rate(rng.score)
        return all(u >= rate for u in rng.first("watermark/select"))

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:
        n, k = answer.probs.shape
        marked = (rng.uniform("watermark/select", 1)[:, 0] < self.rate(rng.score)) & (k > 1)
        if answer.watermarked is not None:
            marked |= answer.watermarked
        if not marked.any():
            return answer.but(watermarked=marked)
        # A keyed offset in 1..k-1: any class but the model's own, uniformly.
        offset = 1 + np.minimum((rng.uniform("watermark/label", 1)[:, 0] * (k - 1)).astype(np.int64), k - 2)
        labels = np.where(marked, (answer.labels + offset) % k, answer.labels)
        return (answer.but(probs=_restore_argmax(answer.probs, labels), labels=labels, watermarked=marked)
                .marked(marked, labels, _others(answer.labels, k), "watermark"))
