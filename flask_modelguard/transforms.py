"""Output transforms: framework-free functions of a batch of answers.

An :class:`Answer` holds, for ``n`` instances and ``k`` classes, the
probability matrix, the served labels and what of it is sent. A transform maps
an answer (and a :class:`KeyedRandom`) to a new answer; a list of transforms is
applied in order by :func:`apply`.

Randomness is deterministic per (secret, account, input): the same account
asking the same question twice gets the same answer, so averaging repeated
queries does not remove the noise, and two accounts get different noise.

Transforms are also written as short strings, parsed by :func:`parse`:
``"round(2)"``, ``"top_k(3, mode='drop')"``, ``"label_only"``,
``"gaussian(0.05)"``, ``"reverse_sigmoid(beta=0.7, gamma=0.2)"``, ...
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .exc import InvalidValue

_EPS = 1e-12


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
    #: (n,) the watermark label chosen for each marked instance (-1 elsewhere).
    mark_labels: np.ndarray | None = None

    def but(self, **changes: Any) -> Answer:
        """A copy with some fields changed (``dataclasses.replace`` costs
        several µs per call, which the request path notices)."""
        values: dict[str, Any] = {
            "probs": self.probs, "labels": self.labels, "keep": self.keep,
            "label_only": self.label_only, "watermarked": self.watermarked,
            "mark_labels": self.mark_labels,
        }
        values.update(changes)
        return Answer(**values)

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

    def __init__(self, seeds: Sequence[bytes], score: float = 0.0) -> None:
        self.seeds = list(seeds)
        #: The account's malicious score in [0, 1] (poisoning may grow with it).
        self.score = score

    @classmethod
    def for_inputs(cls, key: bytes, account: int | str, fingerprints: Sequence[str], score: float = 0.0) -> KeyedRandom:
        prefix = f"{account}:".encode()
        return cls(
            [hashlib.blake2b(prefix + fp.encode(), key=key[:64], digest_size=32).digest() for fp in fingerprints],
            score,
        )

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
        return np.sqrt(-2.0 * np.log(u[:, :k])) * np.cos(2.0 * np.pi * u[:, k:])

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


@dataclass(frozen=True)
class Round(Transform):
    """Round probabilities to ``decimals`` places (ART's ``Rounded``)."""

    decimals: int = 2
    name: ClassVar[str] = "round"

    def __post_init__(self) -> None:
        _integer(self.decimals, "round decimals")

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:
        return answer.but(probs=np.round(answer.probs, self.decimals))


@dataclass(frozen=True)
class TopK(Transform):
    """Send only the k largest entries: the others zeroed (``mode="zero"``) or
    left out of the response (``mode="drop"``); ``renormalise`` rescales the kept ones."""

    k: int = 1
    mode: str = "zero"
    renormalise: bool = False
    name: ClassVar[str] = "top_k"

    def __post_init__(self) -> None:
        _integer(self.k, "top_k k", 1)
        if self.mode not in ("zero", "drop"):
            raise InvalidValue("top_k mode must be 'zero' or 'drop'")

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:
        p = answer.probs
        k = min(self.k, p.shape[1])
        # The served label ranks first, whatever the ties, so it is always kept.
        ranking = p.copy()
        ranking[np.arange(len(p)), answer.labels] = np.inf
        order = np.argsort(-ranking, axis=1, kind="stable")[:, :k]
        keep = np.zeros_like(p, dtype=bool)
        np.put_along_axis(keep, order, True, axis=1)
        out = np.where(keep, p, 0.0)
        if self.renormalise:
            out = renormalise(out)
        if answer.keep is not None:
            keep &= answer.keep
        return answer.but(probs=out, keep=keep if self.mode == "drop" else answer.keep)


@dataclass(frozen=True)
class LabelOnly(Transform):
    """Send the label only (ART's ``ClassLabels``)."""

    name: ClassVar[str] = "label_only"

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:
        return answer.but(label_only=True)


@dataclass(frozen=True)
class HighConfidence(Transform):
    """Zero every probability below ``cutoff`` (ART's ``HighConfidence``); the
    served label's entry is kept."""

    cutoff: float = 0.25
    name: ClassVar[str] = "high_confidence"

    def __post_init__(self) -> None:
        _number(self.cutoff, "high_confidence cutoff", 0.0, 1.0)

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:
        p = answer.probs
        keep = p >= self.cutoff
        keep[np.arange(len(p)), answer.labels] = True
        return answer.but(probs=np.where(keep, p, 0.0))


@dataclass(frozen=True)
class _Noise(Transform):
    scale: float = 0.05
    keep_argmax: bool = True

    def __post_init__(self) -> None:
        _number(self.scale, f"{self.name} scale")

    def _noise(self, rng: KeyedRandom, k: int) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:
        p = answer.probs
        noisy = renormalise(p + self.scale * self._noise(rng, p.shape[1]))
        if self.keep_argmax:
            noisy = _restore_argmax(noisy, answer.labels)
            return answer.but(probs=noisy)
        return answer.but(probs=noisy, labels=noisy.argmax(axis=1))


@dataclass(frozen=True)
class GaussianNoise(_Noise):
    """Add N(0, scale²) noise, clip at 0, renormalise; keeps the argmax by default."""

    name: ClassVar[str] = "gaussian"

    def _noise(self, rng: KeyedRandom, k: int) -> np.ndarray:
        return rng.normal("gaussian", k)


@dataclass(frozen=True)
class LaplaceNoise(_Noise):
    """Add Laplace(0, scale) noise, clip at 0, renormalise; keeps the argmax by default."""

    name: ClassVar[str] = "laplace"

    def _noise(self, rng: KeyedRandom, k: int) -> np.ndarray:
        return rng.laplace("laplace", k)


@dataclass(frozen=True)
class ReverseSigmoid(Transform):
    """Reverse sigmoid perturbation (Lee et al. 2019), in the form of IBM ART's
    postprocessor: ``p - beta * (sigmoid(gamma * logit(p)) - 1/2)``, clipped to
    [0, 1] and renormalised. It can reorder classes; ``keep_argmax`` (default)
    swaps the served label back on top."""

    beta: float = 1.0
    gamma: float = 0.1
    keep_argmax: bool = True
    name: ClassVar[str] = "reverse_sigmoid"

    def __post_init__(self) -> None:
        _number(self.beta, "reverse_sigmoid beta")
        _number(self.gamma, "reverse_sigmoid gamma")
        if self.beta <= 0 or self.gamma <= 0:
            raise InvalidValue("reverse_sigmoid needs beta > 0 and gamma > 0")

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:
        p = answer.probs
        clipped = np.clip(p, 1e-9, 1.0 - 1e-9)
        r = self.beta * (1.0 / (1.0 + np.exp(-self.gamma * np.log(clipped / (1.0 - clipped)))) - 0.5)
        out = renormalise(np.clip(p - r, 0.0, 1.0))
        if self.keep_argmax:
            return answer.but(probs=_restore_argmax(out, answer.labels))
        return answer.but(probs=out, labels=out.argmax(axis=1))


@dataclass(frozen=True)
class Renormalise(Transform):
    """Scale each row to sum 1 (after transforms that break the simplex)."""

    name: ClassVar[str] = "renormalise"

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:
        return answer.but(probs=renormalise(answer.probs))


def _redeal(p: np.ndarray, wrong: np.ndarray, rng: KeyedRandom, purpose: str) -> np.ndarray:
    """Each row's own values re-dealt: the top one to class ``wrong[i]``, the
    rest to the remaining classes in a keyed random order (so the true class
    sits at a random rank, not at a tell-tale second place)."""
    n, k = p.shape
    values = -np.sort(-p, axis=1)
    order = np.argsort(rng.uniform(purpose, k), axis=1)
    q = np.empty_like(p)
    for i in range(n):
        others = [c for c in order[i] if c != wrong[i]]
        q[i, wrong[i]] = values[i, 0]
        q[i, others] = values[i, 1:]
    return q


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
        redealt = _redeal(answer.probs, wrong, rng, "poison/order")
        probs = np.where(hit[:, None], redealt, answer.probs)
        labels = np.where(hit, wrong, answer.labels)
        return answer.but(probs=probs, labels=labels)


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
        rows = np.arange(n)
        # The wrong class: a keyed draw among the others, weighted by the model
        # (a small floor keeps classes with zero mass possible).
        weights = (np.clip(p, 0.0, None) + 1e-3) ** self.plausibility
        weights[rows, answer.labels] = 0.0
        cumulative = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
        wrong = np.minimum((cumulative < rng.uniform("misinformation/class", 1)).sum(axis=1), k - 1)
        q = _redeal(p, wrong, rng, "misinformation/order")
        a = self.strength
        if self.adaptive:
            a = a + (1.0 - a) * rng.score
        out = (1.0 - a) * p + a * q
        return answer.but(probs=out, labels=out.argmax(axis=1))


@dataclass(frozen=True)
class Watermark(Transform):
    """DAWN-style watermark answers (Szyller et al. 2021): a keyed hash of the
    account and input selects about ``fraction`` of the inputs; for them the
    served label is a keyed choice among the other classes, and its probability
    swaps places with the top one (a matching, confident-looking vector). The
    same input from the same account is always marked, or never."""

    fraction: float = 0.005
    name: ClassVar[str] = "watermark"
    keeps_argmax: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _number(self.fraction, "watermark fraction", 0.0, 1.0)

    def skips(self, rng: KeyedRandom) -> bool:
        return all(u >= self.fraction for u in rng.first("watermark/select"))

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:
        n, k = answer.probs.shape
        marked = (rng.uniform("watermark/select", 1)[:, 0] < self.fraction) & (k > 1)
        if answer.watermarked is not None:
            marked |= answer.watermarked
        if not marked.any():
            return answer.but(watermarked=marked)
        # A keyed offset in 1..k-1: any class but the model's own, uniformly.
        offset = 1 + np.minimum((rng.uniform("watermark/label", 1)[:, 0] * (k - 1)).astype(np.int64), k - 2)
        labels = np.where(marked, (answer.labels + offset) % k, answer.labels)
        return answer.but(probs=_restore_argmax(answer.probs, labels), labels=labels, watermarked=marked,
                          mark_labels=np.where(marked, labels, -1))


#: Transforms by name, for strings and configuration.
REGISTRY: dict[str, type[Transform]] = {
    cls.name: cls
    for cls in (Round, TopK, LabelOnly, HighConfidence, GaussianNoise, LaplaceNoise,
                ReverseSigmoid, Renormalise, RandomPoison, Misinformation, Watermark)
}
REGISTRY["renormalize"] = Renormalise


def parse(spec: str | Transform) -> Transform:
    """A transform from ``"name"`` or ``"name(arg, key=value)"`` (literals only)."""
    if isinstance(spec, Transform):
        return spec
    if not isinstance(spec, str):
        raise InvalidValue(f"A transform is a string like 'round(2)' or a Transform, not {spec!r}")
    try:
        node = ast.parse(spec.strip(), mode="eval").body
        if isinstance(node, ast.Name):
            name, args, kwargs = node.id, [], {}
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            args = [ast.literal_eval(a) for a in node.args]
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
        else:
            raise ValueError("not a call")
        cls = REGISTRY[name]
        return cls(*args, **kwargs)
    except InvalidValue:
        raise
    except (SyntaxError, ValueError, KeyError, TypeError) as exc:
        known = ", ".join(sorted(REGISTRY))
        raise InvalidValue(f"Cannot read transform {spec!r} ({exc}); known: {known}") from None


def parse_all(specs: Iterable[str | Transform] | str | Transform | None) -> tuple[Transform, ...]:
    if specs is None:
        return ()
    if isinstance(specs, (str, Transform)):
        specs = [specs]
    return tuple(parse(s) for s in specs)


def apply(transforms: Sequence[Transform], answer: Answer, rng: KeyedRandom) -> Answer:
    """Apply ``transforms`` in order."""
    for transform in transforms:
        answer = transform(answer, rng)
    return answer


@dataclass(frozen=True)
class OutputPolicy:
    """What a route does to answers: transforms for everyone, transforms for
    flagged accounts (applied before them), and the watermark fraction."""

    transforms: tuple[Transform, ...] = ()
    suspicious: tuple[Transform, ...] = ()
    watermark: float = 0.0
    _cache: dict[bool, tuple[Transform, ...]] = field(default_factory=dict, compare=False, repr=False)

    def pipeline(self, flagged: bool) -> tuple[Transform, ...]:
        """The transforms of one answer: watermark first (so later steps treat
        the mark like any answer), for a flagged account the suspicious
        transforms next, then the route's own, for everyone: a flagged
        account's answer has the form (rounding, top-k, label-only) of any."""
        cached = self._cache.get(flagged)
        if cached is None:
            marks: tuple[Transform, ...] = (Watermark(self.watermark),) if self.watermark > 0 else ()
            cached = self._cache[flagged] = marks + (self.suspicious if flagged else ()) + self.transforms
        return cached

    @property
    def active(self) -> bool:
        return bool(self.transforms or self.suspicious or self.watermark > 0)

