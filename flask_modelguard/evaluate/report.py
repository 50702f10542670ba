"""Write an evaluation report: report.json, report.md and PNG plots. matplotlib is imported
only when plots are drawn (rendered with the Agg canvas: no global backend is switched)."""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as M
from .controls import false_claims_line

THRESHOLD = 0.5  # flag threshold drawn on the timelines
MAX_BENIGN_TIMELINES = 20
PLOTS = ("roc", "fidelity", "timelines")


def write_report(out_dir: str | Path, scenario: Mapping[str, Any], runs: Mapping[str, Mapping[str, Any]],
                 *, plots: bool = True, lofo: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write report.json, report.md and (if ``plots``) roc/fidelity/timelines PNGs into ``out_dir``.

    Returns the report dict exactly as written to report.json: ``{scenario,
    command, modes, primary_mode, runs, metrics: {mode: {detection, theft}},
    leaderboard, plots: {name: file or None}, plot_notes: {name: why skipped}}``
    (NaN/inf → None), and ``lofo`` (:func:`~.metrics.leave_one_family_out`) when given.
    """
    if plots:
        try:
            import matplotlib  # noqa: F401, PLC0415
        except ImportError as exc:
            raise RuntimeError("evaluation plots need matplotlib: pip install matplotlib "
                               "(or write the report with plots=False)") from exc
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    modes = M.ordered_modes(runs)
    primary = "default" if "default" in runs else (modes[-1] if modes else None)
    report: dict[str, Any] = {
        "scenario": dict(scenario),
        "command": _command(scenario, out_dir),
        "modes": modes, "primary_mode": primary,
        "runs": {m: runs[m] for m in modes},
        "metrics": {m: {"detection": M.detection_metrics(runs[m]), "theft": M.theft_metrics(runs[m])}
                    for m in modes},
        "leaderboard": M.leaderboard(runs),
    }
    if lofo is not None:
        report["lofo"] = dict(lofo)
    report["plots"], report["plot_notes"] = (_draw(out, runs, primary) if plots else
                                             (dict.fromkeys(PLOTS), dict.fromkeys(PLOTS, "plots were not requested")))
    report = _jsonable(report)
    (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    return report


def _command(scenario: Mapping[str, Any], out_dir: str | Path) -> str:
    args = ["flask", "--app", "example_app", "modelguard", "evaluate", "--scenario",
            str(scenario.get("name", "default")), "--seed", str(scenario.get("seed", 0)), "--out", str(out_dir)]
    if scenario.get("lofo"):
        args.append("--lofo")
    return shlex.join(args)


def _jsonable(value: Any) -> Any:
    """A JSON-safe deep copy: NaN/inf → None, numpy → Python, tuples → lists, keys → str."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


# -- plots ------------------------------------------------------------------------------

_STYLES = {"off": ":", "shadow": "--", "default": "-"}


def _draw(out: Path, runs: Mapping[str, Mapping[str, Any]], primary: str | None) -> tuple[dict, dict]:
    """Draw every plot with the Agg canvas; returns (file per plot or None, note per skipped plot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    files: dict[str, str | None] = {}
    notes: dict[str, str] = {}
    for name, plot in (("roc", _plot_roc), ("fidelity", _plot_fidelity), ("timelines", _plot_timelines)):
        fig = Figure(figsize=(7, 4.5), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        note = plot(fig.add_subplot(), runs, primary)
        if note:
            files[name], notes[name] = None, note
        else:
            fig.savefig(out / f"{name}.png", format="png")
            files[name] = f"{name}.png"
    return files, notes


def _plot_roc(ax: Any, runs: Mapping[str, Mapping[str, Any]], primary: str | None) -> str | None:
    run: Mapping[str, Any] = (runs.get(primary) if primary else None) or {}
    drawn = 0
    for name in M.detector_names(run):
        fpr, tpr, _ = M.detector_roc(run, name)
        if np.isnan(fpr).any() or np.isnan(tpr).any():
            continue
        ax.plot(fpr, tpr, marker=".", lw=2 if name == M.ENSEMBLE else 1.2,
                label=f"{name} (AUC {M.auc(fpr, tpr):.3f})")
        drawn += 1
    if not drawn:
        return f"no detector scored both benign and malicious accounts in the `{primary}` run"
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set(xlabel="false positive rate (benign accounts)", ylabel="true positive rate (malicious accounts)",
           title=f"ROC per detector ({primary} mode)", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    ax.legend(loc="lower right", fontsize="small")
    return None


def _plot_fidelity(ax: Any, runs: Mapping[str, Mapping[str, Any]], primary: str | None) -> str | None:
    from matplotlib.lines import Line2D  # noqa: PLC0415

    colors: dict[str, str] = {}
    modes: list[str] = []
    for mode in M.ordered_modes(runs):
        for clone in runs[mode].get("clones") or []:
            pts = sorted((p["queries"], p["fidelity"]) for p in clone.get("curve") or []
                         if p.get("queries") is not None and not M.is_missing(p.get("fidelity")))
            if not pts:
                continue
            color = colors.setdefault(str(clone.get("actor")), f"C{len(colors) % 10}")
            ax.plot(*zip(*pts), color=color, ls=_STYLES.get(mode, "-."), marker=".")
            modes += [] if mode in modes else [mode]
    if not colors:
        return "no thief reported a fidelity curve"
    handles = [Line2D([], [], color=c, label=a) for a, c in colors.items()]
    handles += [Line2D([], [], color="black", ls=_STYLES.get(m, "-."), label=f"guard {m}") for m in modes]
    ax.legend(handles=handles, fontsize="small", loc="lower right")
    ax.set(xlabel="thief queries", ylabel="clone fidelity (agreement with victim)",
           title="Clone fidelity vs queries", ylim=(0, 1.02))
    return None


def _plot_timelines(ax: Any, runs: Mapping[str, Mapping[str, Any]], primary: str | None) -> str | None:
    accounts = list((runs.get(primary) or {}).get("accounts", [])) if primary else []
    bad = [a for a in accounts if a.get("malicious")]
    good = [a for a in accounts if not a.get("malicious")]
    n_good = len(good)
    if len(good) > MAX_BENIGN_TIMELINES:  # an even, deterministic sample
        good = [good[i] for i in np.linspace(0, len(good) - 1, MAX_BENIGN_TIMELINES).round().astype(int)]
    drawn = {True: 0, False: 0}
    for account in good + bad:
        pts = [(q, s) for _, q, s, *_ in account.get("timeline") or [] if not M.is_missing(s)]
        if not pts:
            continue
        mal = bool(account.get("malicious"))
        label = None if drawn[mal] else (f"malicious ({len(bad)})" if mal else f"benign ({len(good)} of {n_good})")
        ax.plot(*zip(*pts), color="C3" if mal else "grey", alpha=0.9 if mal else 0.5,
                lw=1.4 if mal else 0.8, label=label)
        drawn[mal] += 1
    if not any(drawn.values()):
        return f"no account of the `{primary}` run has a score timeline"
    ax.axhline(THRESHOLD, color="black", ls="--", lw=1, label=f"threshold {THRESHOLD}")
    ax.set(xlabel="account queries", ylabel="malicious score", title=f"Score timelines ({primary} mode)")
    ax.legend(fontsize="small")
    return None


# -- markdown -------------------------------------------------------------------------

def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _cell(str(value))


def _pct(value: Any) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _attackers(report: Mapping[str, Any]) -> list[str]:
    """Every malicious actor of any mode, thieves included, primary mode's order first."""
    modes = ([report["primary_mode"]] if report["primary_mode"] else []) + report["modes"]
    names: dict[str, None] = {}
    for m in modes:
        names.update((r["actor"], None) for r in report["metrics"][m]["detection"]["actors"])
        names.update((t["actor"], None) for t in report["metrics"][m]["theft"]["thieves"])
    return list(names)


def _fidelity(report: Mapping[str, Any], actor: str) -> list[str]:
    found = {m: next((t for t in report["metrics"][m]["theft"]["thieves"] if t["actor"] == actor), None)
             for m in report["modes"]}
    top = max((t["final_queries"] or 0 for t in found.values() if t), default=0)
    cells = []
    for m in report["modes"]:
        t = found[m]
        if t is None or t["final_fidelity"] is None:
            cells.append("—")
            continue
        at = f" (@{t['final_queries']:,})" if t["final_queries"] is not None and t["final_queries"] < top else ""
        cells.append(_fmt(t["final_fidelity"]) + at)
    return cells


def _watermark(wm: Mapping[str, Any] | None, mark: Mapping[str, Any] | None = None) -> str:
    text = f"{wm.get('matched', '?')}/{wm.get('probes', '?')}, log2 p = {_fmt(wm.get('log2_p'), 1)}" if wm else "—"
    if wm and wm.get("attributed_to"):
        text += f", attributed to {_cell(str(wm['attributed_to']))}"
    if mark:  # the probability mark, on a clone of the probabilities
        text += f"; mark log2 p = {_fmt(mark.get('log2_p'), 1)}" + (" ✓" if mark.get("attributed_to") == mark.get("account") else "")
    return text


def _attacker_section(report: Mapping[str, Any]) -> list[str]:
    primary = report["primary_mode"]
    det = {r["actor"]: r for r in report["metrics"][primary]["detection"]["actors"]} if primary else {}
    thieves = {t["actor"]: t for t in report["metrics"][primary]["theft"]["thieves"]} if primary else {}
    guarded = [m for m in report["modes"] if m != "off"]
    marks = {m: {t["actor"]: t for t in report["metrics"][m]["theft"]["thieves"]} for m in guarded}
    header = ["attacker", "kind", "accounts", f"caught? ({primary})", "queries to detection", "reasons",
              *[f"clone fidelity ({m})" for m in report["modes"]], *[f"watermark ({m})" for m in guarded]]
    rows = []
    for actor in _attackers(report):
        r, t = det.get(actor), thieves.get(actor)
        caught = bool(r and r["caught"])
        qtd = _fmt(r["queries_to_detection"]) if r else "—"
        if r and r["detection_basis"] == "account":
            qtd += " (one account)"
        kind = r["kind"] if r else (t or {}).get("kind") or "?"
        rows.append([_cell(str(actor)), _cell(str(kind)), _fmt(r["accounts"]) if r else "—",
                     "✅ caught" if caught else "🔴 not caught", qtd,
                     _cell("; ".join(r["reasons"])) if r and r["reasons"] else "—",
                     *_fidelity(report, actor),
                     *[_watermark((t := marks[m].get(actor) or {}).get("watermark"), t.get("mark"))
                       for m in guarded]])
    lines = ["## Attackers", ""]
    if not rows:
        return lines + ["No malicious actors in this scenario.", ""]
    lines += _table(header, rows)
    lines.append("Queries to detection: the actor's queries over all its accounts when the first flag fell "
                 "(\"one account\": only the flagged account's count was known). Fidelity is the clone's "
                 "agreement with the victim at its largest checkpoint (@N when it got fewer queries). "
                 "Watermark: labels of the account's watermark answers the final clone reproduces, "
                 "and the ownership test's log2 p-value (claimed below log2 p = -64); mark: the probability "
                 "mark's test of a clone distilled on the served vectors (✓ claimed and attributed).")
    lines.append("")
    for m in guarded:
        theft = report["metrics"][m]["theft"]
        independent, models = theft["independent_watermark"], theft.get("independent_models")
        if independent:
            lines += [f"Control ({m}) — an independently trained model, tested against the thieves' "
                      f"evidence: {_watermark(independent)}.", ""]
        if models:
            lines += [false_claims_line(m, models), ""]
    return lines


def _groups_section(report: Mapping[str, Any]) -> list[str]:
    """Colluding accounts, where an attacker has several: how many of its accounts the group detector caught."""
    rows = []
    for m in report["modes"]:
        g = report["metrics"][m]["detection"].get("groups") or {}
        for r in g.get("actors", []):
            rows.append([m, _cell(str(r["actor"])), _cell(r["kind"]), _fmt(r["accounts"]), _fmt(r["grouped"]),
                         _fmt(r["flagged"])])
        if g.get("actors"):
            rows.append([m, "benign accounts", "", _fmt(g["benign_accounts"]), _fmt(g["benign_grouped"]),
                         f"false group rate {_pct(g['benign_grouped_rate'])}"])
    if not rows:
        return []
    return ["## Colluding accounts", "", *_table(["mode", "actor", "kind", "accounts", "grouped", "flagged"], rows),
            "Grouped: accounts whose first flag was a colluding group's (docs/detection.md); flagged: by any "
            "detector.", ""]


def _benign_section(report: Mapping[str, Any]) -> list[str]:
    rows = []
    for m in report["modes"]:
        d, theft = report["metrics"][m]["detection"], report["metrics"][m]["theft"]
        b, u = theft["benign"], theft.get("benign_unflagged") or {}
        rows.append([m, _fmt(d["benign_accounts"]), _fmt(d["benign_flagged"]), _pct(d["benign_flagged_rate"]),
                     _fmt(b["queries"]), _fmt(b["served_accuracy"], 4), _pct(b["accuracy_loss"]),
                     _pct(u.get("accuracy_loss"))])
    return ["## Benign users", "", *_table(["mode", "accounts", "flagged", "flagged rate", "queries",
                                            "served accuracy", "accuracy loss (all)",
                                            "accuracy loss (unflagged)"], rows),
            "Accuracy loss: top-1 accuracy of the model's own answers minus that of the answers served, on "
            "the benign users' queries; \"all\" includes benign users wrongly flagged (served "
            "misinformation), \"unflagged\" the others (what the watermark costs).", ""]


def _detector_section(report: Mapping[str, Any]) -> list[str]:
    lines = ["## Detectors", ""]
    rows = [[r["mode"], _cell(r["detector"]), _fmt(r["auc"]), _fmt(r["tpr_at_1pct"]), _fmt(r["tpr_at_0_1pct"]),
             _fmt(r["precision"]), _fmt(r["recall"]), _fmt(r["f1"]), _fmt(r["n_benign"]), _fmt(r["n_malicious"])]
            for r in report["leaderboard"]]
    if not rows:
        return lines + ["No detector scores were recorded.", ""]
    lines += _table(["mode", "detector", "AUC", "TPR@1%FPR", "TPR@0.1%FPR", "precision", "recall", "F1",
                     "benign", "malicious"], rows)
    n = min((r["n_benign"] for r in report["leaderboard"] if r["n_benign"]), default=0)
    lines.append(f"Per account; \"{M.ENSEMBLE}\" is the ensemble, and precision/recall/F1 are those of its flag "
                 "decision. TPR@FPR is the empirical rate at the curve's points with FPR ≤ the target"
                 + (f": with {n} benign accounts the smallest non-zero FPR is {100 / n:.2g}%, so a target "
                    "below it means TPR at zero false positives." if n else "."))
    return lines + [""]


def _lofo_cells(side: Mapping[str, Any] | None) -> list[str]:
    if not side:
        return ["—", "—"]
    return [f"{side['flagged']}/{side['accounts']}", _fmt(side.get("queries_to_flag"), 0)]


def _lofo_section(report: Mapping[str, Any]) -> list[str]:
    lofo = report.get("lofo")
    if not lofo:
        return []
    rows = [[_cell(str(r["family"])), _fmt(r["accounts"]), *_lofo_cells(r.get("held_out")),
             *_lofo_cells(r.get("in_family")),
             _pct(r.get("benign_flag_rate")) if r.get("held_out") else _cell(f"not trained: {r.get('error')}")]
            for r in lofo["families"]]
    header = ["family", "accounts", "flagged (held out)", "queries to flag (held out)", "flagged (in family)",
              "queries to flag (in family)", "benign flagged (held-out model)"]
    return ["## Leave one family out", "", *_table(header, rows),
            f"Each family's accounts judged by a random forest and stacked ensemble trained on the practice "
            f"run without that family (held out) and with it (in family): the `{lofo.get('mode')}` "
            f"run's stored evaluations re-scored offline, in query order; an account is flagged at its first "
            f"evaluation with ensemble score ≥ {lofo.get('threshold', 0.5)} or hard evidence (sign steps, which "
            f"flag whatever the ensemble says), and queries to flag is the median "
            f"over the family's flagged accounts. Benign accounts flagged by the in-family model: "
            f"{_pct(lofo.get('benign_flag_rate'))} of {_fmt(lofo.get('benign_accounts'))}.", ""]


def _alerts_section(report: Mapping[str, Any]) -> list[str]:
    rows = [[m, _fmt(d["queries"]), _fmt(d["alerts"]), _fmt(d["alerts_per_1000_queries"], 2)]
            for m in report["modes"] for d in [report["metrics"][m]["detection"]]]
    return ["## Alerts", "", *_table(["mode", "queries", "alerts", "alerts per 1,000 queries"], rows)]


def _latency_section(report: Mapping[str, Any]) -> list[str]:
    lat = report["scenario"].get("latency")
    if not lat:
        return []
    return ["## Latency", "", *_table(["bare (ms)", "guarded (ms)", "ratio"],
                                      [[_fmt(lat.get("bare_ms"), 2), _fmt(lat.get("guarded_ms"), 2),
                                        _fmt(lat.get("ratio"), 2)]])]


_PLOT_TITLES = {"roc": "ROC curves per detector", "fidelity": "Clone fidelity vs queries",
                "timelines": "Malicious score vs account queries"}


def _plot_section(report: Mapping[str, Any]) -> list[str]:
    lines = ["## Plots", ""]
    for name in PLOTS:
        title = _PLOT_TITLES[name]
        if report["plots"].get(name):
            lines += [f"![{title}]({report['plots'][name]})", ""]
        else:
            lines += [f"_{title}: skipped — {report['plot_notes'].get(name, 'no data')}._", ""]
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    """report.md from a report dict as :func:`write_report` returns it."""
    sc = report["scenario"]
    lines = [f"# ModelGuard evaluation — scenario `{sc.get('name', '?')}`, seed {sc.get('seed', '?')}", ""]
    if sc.get("description"):
        lines += [str(sc["description"]), ""]
    lines += ["Regenerate with:", "", "```", report["command"], "```", "",
              f"Modes: {', '.join(report['modes']) or 'none'}. Detection tables use the "
              f"`{report['primary_mode']}` run.", ""]
    for section in (_attacker_section, _groups_section, _benign_section, _detector_section, _lofo_section, _alerts_section,
                    _latency_section, _plot_section):
        lines += section(report)
    return "\n".join(lines).rstrip() + "\n"
