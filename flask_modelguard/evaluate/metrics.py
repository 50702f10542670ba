"""Metrics of an evaluation run: detection (ROC, flags, per attacker) and theft.

Pure functions over the plain run dicts the runner produces (see the runner for the format).
Scores are per *account*; "caught" is per *actor* (a sybil is caught when any of its accounts is).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..detectors.registry import ENSEMBLE_SCORE, hard_flag
from ..detectors.supervised import rescore
from .groups import group_metrics

#: Guard modes in the order tables show them; other modes follow, sorted.
MODES = ("off", "shadow", "default")
#: The ensemble score; the flag decision is taken on it.
ENSEMBLE = ENSEMBLE_SCORE

Run = Mapping[str, Any]


def ordered_modes(runs: Iterable[str]) -> list[str]:
    """The modes of ``runs`` with off, shadow, default first."""
    names = list(runs)
    return [m for m in MODES if m in names] + sorted(m for m in names if m not in MODES)


def is_missing(value: Any) -> bool:
    """None or NaN: a value the run did not record."""
    return value is None or (isinstance(value, float) and math.isnan(value))


# -- ROC -------------------------------------------------------------------------

def roc(scores: Sequence[float | None], labels: Sequence[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of ``scores`` (higher = positive) against boolean ``labels``.

    Returns ``(fpr, tpr, thresholds)``: one point per distinct score, highest
    first, preceded by (0, 0) at threshold +inf; tied scores form one step, so
    ties count half in :func:`auc`. Missing scores (None/NaN) are dropped. When
    there are no positives (negatives) the tpr (fpr) array is all NaN.
    """
    s = np.array([np.nan if v is None else float(v) for v in scores], dtype=float)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    keep = ~np.isnan(s)
    s, y = s[keep], y[keep]
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1] if s.size else np.array([], dtype=int)
    tps = np.r_[0, np.cumsum(y)[last]].astype(float)
    fps = np.r_[0, np.cumsum(~y)[last]].astype(float)
    pos, neg = tps[-1], fps[-1]
    tpr = tps / pos if pos else np.full(tps.shape, np.nan)
    fpr = fps / neg if neg else np.full(fps.shape, np.nan)
    return fpr, tpr, np.r_[np.inf, s[last]]


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids); NaN when the curve is undefined."""
    fpr, tpr = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
    if fpr.size < 2 or np.isnan(fpr).any() or np.isnan(tpr).any():
        return math.nan
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def roc_auc(scores: Sequence[float | None], labels: Sequence[bool]) -> float:
    """:func:`auc` of :func:`roc` in one call."""
    fpr, tpr, _ = roc(scores, labels)
    return auc(fpr, tpr)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest TPR among the curve's points with FPR ≤ ``target``.

    An empirical rate: with N benign accounts the smallest non-zero FPR is 1/N,
    so for target < 1/N this is the TPR at FPR 0 (no interpolation).
    """
    fpr, tpr = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return math.nan
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else math.nan


# -- detection ---------------------------------------------------------------------

def _flagged(account: Mapping[str, Any]) -> bool:
    """Flagged at any time of the run (a flag may have expired by the end)."""
    return bool(account.get("flagged")) or account.get("first_flag_queries") is not None


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def detector_names(run: Run) -> list[str]:
    """Every detector appearing in any account's scores, the ensemble first."""
    names = {k for a in run.get("accounts", []) for k in (a.get("scores") or {})}
    return ([ENSEMBLE] if ENSEMBLE in names else []) + sorted(names - {ENSEMBLE})


def _pairs(run: Run, detector: str) -> list[tuple[float, bool]]:
    pairs: list[tuple[Any, bool]] = [((a.get("scores") or {}).get(detector), bool(a.get("malicious")))
                                     for a in run.get("accounts", [])]
    return [(s, m) for s, m in pairs if not is_missing(s)]


def detector_roc(run: Run, detector: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`roc` of one detector over the accounts of ``run`` that have its score."""
    pairs = _pairs(run, detector)
    return roc([s for s, _ in pairs], [m for _, m in pairs])


def detector_metrics(run: Run, detector: str) -> dict[str, Any]:
    """AUC and TPR at 1% / 0.1% FPR of one detector over the accounts that have its score."""
    pairs = _pairs(run, detector)
    fpr, tpr, _ = roc([s for s, _ in pairs], [m for _, m in pairs])
    n_mal = sum(m for _, m in pairs)
    n_ben = len(pairs) - n_mal
    return {"auc": auc(fpr, tpr), "tpr_at_1pct": tpr_at_fpr(fpr, tpr, 0.01),
            "tpr_at_0_1pct": tpr_at_fpr(fpr, tpr, 0.001), "n_benign": n_ben, "n_malicious": n_mal,
            "fpr_resolution": _ratio(1, n_ben)}


def _queries_at(account: Mapping[str, Any], ts: float) -> int | None:
    """Queries of ``account`` at its last evaluation at or before ``ts`` (a lower bound)."""
    timeline = account.get("timeline") or []
    if not timeline:
        return 0 if not account.get("queries") else None
    before = [int(q) for t, q, *_ in timeline if t <= ts]
    return before[-1] if before else 0


def _flag_time(account: Mapping[str, Any]) -> float | None:
    """Timestamp of the evaluation that first flagged ``account``, if its timeline shows it."""
    q = account.get("first_flag_queries")
    if q is None:
        return None
    return next((float(t) for t, n, *_ in account.get("timeline") or [] if n >= q), None)


def _actor_row(actor: str, accounts: list[Mapping[str, Any]]) -> dict[str, Any]:
    flagged = [a for a in accounts if _flagged(a)]
    kinds = list(dict.fromkeys(str(a.get("kind", "")) for a in accounts))
    row: dict[str, Any] = {
        "actor": actor, "kind": "/".join(kinds), "accounts": len(accounts),
        "queries": sum(int(a.get("queries") or 0) for a in accounts),
        "refused": sum(int(a.get("refused") or 0) for a in accounts),
        "caught": bool(flagged), "queries_to_detection": None, "detection_basis": None,
        "flagged_accounts": [a.get("name") for a in flagged], "reasons": [],
    }
    timed = [a for a in flagged if a.get("first_flag_queries") is not None]
    if not timed:
        if flagged:
            row["reasons"] = list(flagged[0].get("reasons") or [])
        return row
    first = min(timed, key=lambda a: a["first_flag_queries"])
    row["reasons"] = list(first.get("reasons") or [])
    row["queries_to_detection"], row["detection_basis"] = int(first["first_flag_queries"]), "account"
    if len(accounts) == 1:
        row["detection_basis"] = "actor"
        return row
    times: dict[int, float] = {}
    for a in timed:
        if (t := _flag_time(a)) is None:
            return row
        times[id(a)] = t
    first = min(timed, key=lambda a: times[id(a)])
    t_flag = times[id(first)]
    others: list[int] = []
    for a in accounts:
        if a is not first:
            if (q := _queries_at(a, t_flag)) is None:
                return row
            others.append(q)
    row["reasons"] = list(first.get("reasons") or [])
    row["queries_to_detection"] = int(first["first_flag_queries"]) + sum(others)
    row["detection_basis"] = "actor"
    return row


def detection_metrics(run: Run) -> dict[str, Any]:
    """Detection quality of one run.

    Returns ``{"detectors": {name: detector_metrics}, "flags": {tp, fp, fn, tn,
    precision, recall, f1}, "benign_accounts", "benign_flagged",
    "benign_flagged_rate", "queries", "alerts", "alerts_per_1000_queries",
    "actors": [row per malicious actor], "groups": :func:`~.groups.group_metrics`}``. An account counts as flagged if it
    was flagged at any time. An actor row's ``queries_to_detection`` is the
    actor's queries over all its accounts when the first flag fell
    (``detection_basis`` "actor"; other accounts are read at their last
    evaluation before the flag, a lower bound), or, when the timelines cannot
    tell, the smallest ``first_flag_queries`` of its accounts ("account").
    Undefined ratios are NaN.
    """
    accounts = list(run.get("accounts", []))
    pred = [_flagged(a) for a in accounts]
    true = [bool(a.get("malicious")) for a in accounts]
    tp = sum(p and t for p, t in zip(pred, true))
    fp = sum(p and not t for p, t in zip(pred, true))
    fn = sum(t and not p for p, t in zip(pred, true))
    tn = len(accounts) - tp - fp - fn
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for a in accounts:
        groups.setdefault(str(a.get("actor") or a.get("name")), []).append(a)
    queries, alerts = int(run.get("queries") or 0), int(run.get("alerts") or 0)
    return {
        "detectors": {name: detector_metrics(run, name) for name in detector_names(run)},
        "flags": {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": _ratio(tp, tp + fp),
                  "recall": _ratio(tp, tp + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn)},
        "benign_accounts": fp + tn, "benign_flagged": fp, "benign_flagged_rate": _ratio(fp, fp + tn),
        "queries": queries, "alerts": alerts, "alerts_per_1000_queries": _ratio(1000 * alerts, queries),
        "actors": [_actor_row(name, accs) for name, accs in groups.items()
                   if any(a.get("malicious") for a in accs)],
        "groups": group_metrics(run),
    }


# -- theft ---------------------------------------------------------------------------

def _thief_row(clone: Mapping[str, Any]) -> dict[str, Any]:
    curve = sorted((dict(p) for p in clone.get("curve") or []), key=lambda p: p.get("queries", 0))
    last = curve[-1] if curve else {}
    wm = clone.get("watermark")
    return {
        "actor": clone.get("actor"), "kind": clone.get("kind"), "surrogate": clone.get("surrogate"),
        "answers": clone.get("answers"), "final_queries": last.get("queries"),
        "final_fidelity": last.get("fidelity", math.nan), "final_accuracy": last.get("accuracy", math.nan),
        "checkpoints": [{"queries": p.get("queries"), "fidelity": p.get("fidelity", math.nan),
                         "accuracy": p.get("accuracy", math.nan)} for p in curve],
        "watermark": dict(wm) if wm else None,
        "watermark_log2_p": wm.get("log2_p", math.nan) if wm else math.nan,
        "mark": dict(clone["mark"]) if clone.get("mark") else None,
    }


def _benign_summary(benign: Mapping[str, Any]) -> dict[str, Any]:
    return {"model_accuracy": _nan_if_missing(benign.get("model_accuracy")),
            "served_accuracy": _nan_if_missing(benign.get("served_accuracy")),
            "accuracy_loss": _nan_if_missing(benign.get("accuracy_loss")), "queries": benign.get("queries")}


def theft_metrics(run: Run) -> dict[str, Any]:
    """What the thieves got and what benign users paid.

    Returns ``{"thieves": [{actor, kind, surrogate, answers, final_queries,
    final_fidelity, final_accuracy, checkpoints: [{queries, fidelity,
    accuracy}], watermark, watermark_log2_p}], "benign": {model_accuracy,
    served_accuracy, accuracy_loss, queries}, "independent_watermark": dict | None}``.
    """
    benign = dict(run.get("benign") or {})
    model, served = benign.get("model_accuracy"), benign.get("served_accuracy")
    loss = benign.get("accuracy_loss")
    if is_missing(loss) and not is_missing(model) and not is_missing(served):
        assert model is not None and served is not None  # not missing
        loss = model - served
    independent = run.get("independent") or {}
    return {
        "thieves": [_thief_row(c) for c in run.get("clones") or []],
        "benign": {"model_accuracy": _nan_if_missing(model), "served_accuracy": _nan_if_missing(served),
                   "accuracy_loss": _nan_if_missing(loss), "queries": benign.get("queries")},
        "independent_watermark": dict(independent["watermark"]) if independent.get("watermark") else None,
        "independent_models": {k: independent[k] for k in ("models", "accounts", "false_claims", "lowest_log2_p")
                               if k in independent} or None,
        "benign_unflagged": _benign_summary(run.get("benign_unflagged") or {}),
    }


def _nan_if_missing(value: Any) -> float:
    return math.nan if is_missing(value) else float(value)


# -- leaderboard -----------------------------------------------------------------------

def leaderboard(runs: Mapping[str, Run]) -> list[dict[str, Any]]:
    """Rows comparing detectors across modes: AUC, TPR@1%FPR, TPR@0.1%FPR, precision, recall, F1.

    One row ``{mode, detector, auc, tpr_at_1pct, tpr_at_0_1pct, precision,
    recall, f1, n_benign, n_malicious}`` per detector of each mode (ensemble
    first, then by AUC). Precision/recall/F1 are those of the flag decision, so
    they sit on the ensemble row (or on a "flag decision" row when no ensemble
    score was recorded) and are None for the single detectors, whose own
    thresholds the run does not report. Modes without scores or flags are left out.
    """
    rows: list[dict[str, Any]] = []
    for mode in ordered_modes(runs):
        det = detection_metrics(runs[mode])
        flags = {k: det["flags"][k] for k in ("precision", "recall", "f1")}
        none = dict.fromkeys(flags)
        detectors = det["detectors"]
        if not detectors and not (det["flags"]["tp"] or det["flags"]["fp"]):
            continue
        singles = sorted((n for n in detectors if n != ENSEMBLE),
                         key=lambda n: -(detectors[n]["auc"] if not is_missing(detectors[n]["auc"]) else -1))
        if ENSEMBLE not in detectors:
            rows.append({"mode": mode, "detector": "flag decision", "auc": None, "tpr_at_1pct": None,
                         "tpr_at_0_1pct": None, **flags, "n_benign": det["benign_accounts"],
                         "n_malicious": det["flags"]["tp"] + det["flags"]["fn"]})
        for name in ([ENSEMBLE] if ENSEMBLE in detectors else []) + singles:
            m = detectors[name]
            rows.append({"mode": mode, "detector": name, "auc": m["auc"], "tpr_at_1pct": m["tpr_at_1pct"],
                         "tpr_at_0_1pct": m["tpr_at_0_1pct"], **(flags if name == ENSEMBLE else none),
                         "n_benign": m["n_benign"], "n_malicious": m["n_malicious"]})
    return rows


# -- leave one family out ----------------------------------------------------------------

#: The ensemble score at which the guard flags.
FLAG_AT = 0.5

Evaluations = Mapping[str, Sequence[Any]]


def _row_queries(evaluations: Evaluations) -> list[int]:
    """Queries of the account at each evaluation: ``evaluations["queries"]``, else from ``log_queries``."""
    if evaluations.get("queries") is not None:
        return [int(q) for q in evaluations["queries"]]
    return [int(round(math.expm1(float(r.get("log_queries") or 0.0)))) for r in evaluations["rows"]]


def _flag_queries(trained: Any, evaluations: Evaluations, names: set[str],
                  prada_threshold: float) -> dict[str, int | None]:
    """Per account of ``names``: its queries at the first evaluation scored
    ≥ 0.5, or holding hard evidence that flags whatever the verdict (sign
    steps, :func:`~flask_modelguard.detectors.registry.hard_flag`); None: never."""
    groups = [str(g) for g in evaluations["groups"]]
    index = [i for i, g in enumerate(groups) if g in names]
    scores = rescore(trained, [evaluations["rows"][i] for i in index], prada_threshold)
    queries = _row_queries(evaluations)
    out: dict[str, int | None] = dict.fromkeys(sorted(names))
    for i, score in zip(index, scores):  # rows are in order of each account's queries
        if (score >= FLAG_AT or hard_flag(evaluations["rows"][i])) and out[groups[i]] is None:
            out[groups[i]] = queries[i]
    return out


def _summary(first: Mapping[str, int | None]) -> dict[str, Any]:
    flagged = [q for q in first.values() if q is not None]
    return {"accounts": len(first), "flagged": len(flagged),
            "queries_to_flag": float(np.median(flagged)) if flagged else None, "per_account": dict(first)}


def leave_one_family_out(training: Evaluations, test: Evaluations, families: Mapping[str, str], *,
                         anomaly_kinds: Sequence[str] = (), fpr: float = 0.005, prada_threshold: float = 0.9,
                         seed: int = 0) -> dict[str, Any]:
    """How the supervised detectors do on a thief family they never saw.

    ``training`` and ``test`` are labelled evaluations ``{"rows", "labels",
    "groups"}`` (and optionally ``"queries"``) of a practice run and of the
    measured run; ``families`` maps every malicious account (of both) to its
    family (the actor's kind). For each family F found in ``test``: the
    detectors are trained (:func:`~flask_modelguard.detectors.supervised.train`)
    on ``training`` without any account of F, and F's accounts in ``test``
    are re-scored with them, evaluation by evaluation (:func:`rescore`);
    queries-to-flag is an account's query count at its first evaluation
    scored ≥ 0.5. The same is done with detectors trained on all of
    ``training`` ("in family"). Each family's ``benign_flag_rate`` is the
    share of benign accounts of ``test`` its held-out detectors flag.
    """
    from ..detectors.supervised import train

    options: dict[str, Any] = {"anomaly_kinds": list(anomaly_kinds), "fpr": fpr, "prada_threshold": prada_threshold,
                               "seed": seed}
    labels = [bool(v) for v in test["labels"]]
    benign = {str(g) for g, m in zip(test["groups"], labels) if not m}
    malicious = {str(g) for g, m in zip(test["groups"], labels) if m}
    members: dict[str, set[str]] = {}
    for name in sorted(malicious):
        members.setdefault(families.get(name, "?"), set()).add(name)
    everything = train(training["rows"], training["labels"], training["groups"], **options)
    in_family = _flag_queries(everything, test, malicious | benign, prada_threshold)
    out: dict[str, Any] = {"method": "offline re-scoring of the measured run's stored evaluations",
                           "threshold": FLAG_AT, "benign_accounts": len(benign),
                           "benign_flag_rate": _ratio(sum(in_family[b] is not None for b in benign), len(benign)),
                           "families": []}
    for family, names in sorted(members.items()):
        row: dict[str, Any] = {"family": family, "accounts": len(names),
                               "in_family": _summary({n: in_family[n] for n in names})}
        keep = [i for i, g in enumerate(training["groups"]) if families.get(str(g)) != family]
        row["train_accounts_removed"] = len({str(g) for g in training["groups"]} -
                                            {str(training["groups"][i]) for i in keep})
        try:
            held = train([training["rows"][i] for i in keep], [training["labels"][i] for i in keep],
                         [training["groups"][i] for i in keep], **options)
        except ValueError as exc:  # too few accounts left to train on
            row["held_out"], row["benign_flag_rate"], row["error"] = None, None, str(exc)
        else:
            first = _flag_queries(held, test, names | benign, prada_threshold)
            row["held_out"] = _summary({n: first[n] for n in names})
            row["benign_flag_rate"] = _ratio(sum(first[b] is not None for b in benign), len(benign))
        out["families"].append(row)
    return out
