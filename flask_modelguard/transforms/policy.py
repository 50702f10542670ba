"""Transforms by name, parsed from strings, applied in order, and a route's
output policy."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..exc import InvalidValue
from .base import Answer, KeyedRandom, Transform
from .deception import Misinformation, RandomPoison, Watermark
from .marking import ProbabilityMark
from .shaping import GaussianNoise, HighConfidence, LabelOnly, LaplaceNoise, Renormalise, ReverseSigmoid, Round, TopK

#: Transforms by name, for strings and configuration.
REGISTRY: dict[str, type[Transform]] = {
    cls.name: cls
    for cls in (Round, TopK, LabelOnly, HighConfidence, GaussianNoise, LaplaceNoise,
                ReverseSigmoid, Renormalise, RandomPoison, Misinformation, Watermark, ProbabilityMark)
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
    #: The watermark fraction of accounts whose malicious score reached the flag
    #: threshold (0.5), risen linearly from ``watermark`` at ``watermark_from``; None: no rise.
    watermark_raised: float | None = None
    watermark_from: float = 0.35
    #: The probability mark's strength (0: none), for every account.
    probability_mark: float = 0.0
    _cache: dict[bool, tuple[Transform, ...]] = field(default_factory=dict, compare=False, repr=False)

    def pipeline(self, flagged: bool) -> tuple[Transform, ...]:
        """The transforms of one answer: watermark first (so later steps treat
        the mark like any answer), for a flagged account the suspicious
        transforms next, then the route's own, for everyone: a flagged
        account's answer has the form (rounding, top-k, label-only) of any."""
        cached = self._cache.get(flagged)
        if cached is None:
            marks: tuple[Transform, ...] = (self._watermark(),) if self.watermark > 0 else ()
            # The probability mark is keyed by the served label, so it comes after every step that
            # may change it: watermark and misinformation answers show the same pattern as any answer.
            lift: tuple[Transform, ...] = (ProbabilityMark(self.probability_mark),) if self.probability_mark else ()
            cached = self._cache[flagged] = marks + (self.suspicious if flagged else ()) + lift + self.transforms
        return cached

    def _watermark(self) -> Watermark:
        raised = None if self.watermark_raised is None else max(self.watermark, self.watermark_raised)
        return Watermark(self.watermark, raised=raised, rise_from=min(self.watermark_from, 0.5))

    @property
    def active(self) -> bool:
        return bool(self.transforms or self.suspicious or self.watermark > 0 or self.probability_mark)

