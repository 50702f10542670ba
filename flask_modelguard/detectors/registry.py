"""The kinds of detector, and each one's evidence in an evaluation.
Framework-free (plain Python: no numpy, no scikit-learn).

:data:`KINDS` is the one table of what a detector is: its name, the key of its
statistic in an evaluation's scores, how its threshold is found, whether it is
*hard* evidence (flags on its own whatever the verdict mode), the words of its
reason and the label the dashboard gives it. :func:`evidence` reads an
evaluation's scores through that table; the monitor (reasons, the untrained
ensemble, the stacked ensemble's input, hard flags), the stacked ensemble's
training and re-scoring, the dashboard's evidence chart and the evaluation all
read it, so a detector is added in one place. Anything else in the scores
(the behaviour vector, window statistics such as ``hour_unique_ratio``) is
behaviour, not a detector, and is ignored.

The evidence of a detector is its score over its own threshold (its *ratio*):
1 is "at its threshold", higher is more malicious. PRADA's W flags when it
falls *below* δ, so its ratio is ``(1 - W) / (1 - δ)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: How a kind's threshold is found (:attr:`Kind.threshold`).
THRESHOLDS = {
    "setting": "a setting: PRADA's δ, MODELGUARD_PRADA_THRESHOLD",
    "reference": "recorded with the score as <name>_threshold: the reference's threshold at the account's "
                 "distinct queries; the ratio as <name>_ratio",
    "unit": "1: the score is already a ratio (sign steps' step evidence)",
    "calibrated": "fitted at the ensemble's benign false-positive rate (the model's own threshold); "
                  "recorded as the ratio <name>_ratio",
}

#: What makes a kind live in a process (:attr:`Kind.needs`; readiness.py).
NEEDS = ("nothing", "reference", "population", "fit", "calibration", "")


@dataclass(frozen=True)
class Kind:
    """One kind of detector."""

    name: str
    #: How the dashboard names it.
    label: str
    #: The key of its statistic in an evaluation's scores.
    score: str
    #: How its threshold is found: a key of :data:`THRESHOLDS`.
    threshold: str
    #: The key of its ratio in the scores (None: computed from the score, PRADA's).
    ratio: str | None = None
    #: Hard evidence: flags on its own at its threshold (inclusive), whatever the verdict mode.
    hard: bool = False
    #: Flags when its score falls below its threshold (PRADA's W).
    below: bool = False
    #: Listed before it gives a verdict (the dashboard shows "no verdict yet").
    always: bool = False
    #: What makes it live (readiness.py): a set-up step of :data:`NEEDS`; "" when it is part of another.
    needs: str = "nothing"
    #: The verdict's reason when it flags ({name}, {label}, {score}, {threshold}, {distinct}).
    reason: str = ""
    #: Its score combines the others' evidence (the ensemble): not evidence itself.
    combines: bool = False

    @property
    def threshold_key(self) -> str:
        """Where a "reference" threshold is recorded in the scores."""
        return f"{self.name}_threshold"


_MODEL = "{name} {score:.3f} > {threshold:.3f}"
_DISTANCE = "{label} {score:.1f} > {threshold:.1f} at {distinct} distinct queries"

#: Every kind, in the order reasons and the dashboard list them.
KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("prada", "PRADA", "prada_w", "setting", below=True, always=True, reason="PRADA W={score:.3f} < {threshold}"),
    Kind("add", "ADD", "add", "reference", ratio="add_ratio", always=True, needs="reference", reason=_DISTANCE),
    Kind("population", "population", "population", "reference", ratio="population_ratio", needs="population",
         reason=_DISTANCE),
    Kind("steps", "sign steps", "steps_ratio", "unit", ratio="steps_ratio", hard=True, needs=""),
    Kind("isolation_forest", "isolation forest", "isolation_forest", "calibrated", ratio="isolation_forest_ratio",
         needs="fit", reason=_MODEL),
    Kind("one_class_svm", "one class svm", "one_class_svm", "calibrated", ratio="one_class_svm_ratio", needs="fit",
         reason=_MODEL),
    Kind("lof", "lof", "lof", "calibrated", ratio="lof_ratio", needs="fit", reason=_MODEL),
    Kind("random_forest", "random forest", "random_forest", "calibrated", ratio="random_forest_ratio",
         needs="calibration", reason=_MODEL),
    Kind("ensemble", "ensemble", "malicious", "calibrated", needs="calibration", combines=True),
)}

#: The kinds that give evidence (all but the ensemble, which combines it).
DETECTORS = tuple(kind for kind in KINDS.values() if not kind.combines)
#: The behaviour anomaly models (MODELGUARD_ANOMALY_MODELS), fitted on benign accounts.
ANOMALY_KINDS = tuple(kind.name for kind in KINDS.values() if kind.needs == "fit")
#: The ensemble's score in an evaluation (0.5 at its calibrated threshold).
ENSEMBLE_SCORE = KINDS["ensemble"].score


@dataclass(frozen=True)
class Evidence:
    """One detector's evidence in one evaluation."""

    kind: str
    #: Its statistic (PRADA's W, ADD's distance, a model's score); None when not recorded.
    score: float | None
    #: Where it flags; None when not known (a model's threshold is known to the monitor only).
    threshold: float | None
    #: Its score over its threshold (1: at it; higher: more malicious); None: no verdict yet.
    ratio: float | None
    #: Past its threshold: the detector flags.
    over: bool

    @property
    def hard(self) -> bool:
        return KINDS[self.kind].hard

    @property
    def label(self) -> str:
        return KINDS[self.kind].label

    def reason(self, distinct: int | None = None) -> str:
        """The verdict's words for this evidence (``distinct``: the account's distinct queries)."""
        kind = KINDS[self.kind]
        if not kind.reason or self.score is None or self.threshold is None:
            return f"{kind.label} {self.ratio or 0.0:.2f} × threshold"
        return kind.reason.format(name=kind.name, label=kind.label, score=self.score, threshold=self.threshold,
                                  distinct=distinct)


def _real(value: Any) -> float | None:
    """A number (inf and NaN included: they compare as they did), else None."""
    return float(value) if isinstance(value, (int, float)) else None


def _finite(value: Any) -> float | None:
    number = _real(value)
    return number if number is not None and math.isfinite(number) else None


def _over(kind: Kind, score: float | None, threshold: float | None, ratio: float | None) -> bool:
    if score is not None and threshold is not None:
        return score < threshold if kind.below else score >= threshold if kind.hard else score > threshold
    return ratio is not None and (ratio >= 1.0 if kind.hard else ratio > 1.0)


def evidence(scores: Mapping[str, Any], prada_threshold: float = 0.9,
             thresholds: Mapping[str, float] | None = None) -> list[Evidence]:
    """Each detector's evidence in an evaluation's ``scores``, in :data:`KINDS`' order.

    ``prada_threshold`` is PRADA's δ; ``thresholds`` the fitted models' own
    thresholds by kind, when known (the monitor's; stored scores hold their
    ratios only). PRADA and ADD are always listed (ratio None before they give
    a verdict); the others when their scores record them. Unknown keys are ignored.
    """
    known = {"prada": prada_threshold, **(thresholds or {})}
    out: list[Evidence] = []
    for kind in DETECTORS:
        score = _real(scores.get(kind.score))
        if kind.threshold == "reference":
            threshold = _real(scores.get(kind.threshold_key))
        else:
            threshold = 1.0 if kind.threshold == "unit" else known.get(kind.name)
        if kind.ratio is None:  # PRADA: W below δ is evidence
            w = _finite(score)
            ratio = None if w is None or threshold is None else (1.0 - w) / (1.0 - threshold)
        else:
            ratio = _finite(scores.get(kind.ratio))
        listed = kind.always or (kind.ratio is not None and kind.ratio in scores) or None not in (score, threshold)
        if listed:
            out.append(Evidence(kind.name, score, threshold, ratio, _over(kind, score, threshold, ratio)))
    return out


def ratios(found: Iterable[Evidence]) -> dict[str, float]:
    """Each detector's ratio, 0 where it gave no verdict: the stacked ensemble's input row."""
    return {e.kind: 0.0 if e.ratio is None else e.ratio for e in found}


def hard_flag(scores: Mapping[str, Any]) -> bool:
    """Whether an evaluation's scores hold hard evidence (sign steps) at its threshold."""
    return any(e.hard and e.over for e in evidence(scores))
