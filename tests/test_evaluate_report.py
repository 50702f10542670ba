"""The evaluation report writer on a constructed three-mode run."""

from __future__ import annotations

import json
import sys

import pytest

from flask_modelguard.evaluate.report import write_report

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


def _account(name, actor, kind, malicious, queries, score, *, flag=None, reasons=(), extra=None):
    steps = [(q, min(score, score * q / queries)) for q in range(50, queries + 1, 50)]
    return {"name": name, "actor": actor, "kind": kind, "malicious": malicious, "queries": queries,
            "refused": 0, "flagged": flag is not None, "first_flag_queries": flag, "reasons": list(reasons),
            "scores": {"malicious": score, "prada": score / 2, **(extra or {})},
            "timeline": [[i * 10.0, q, s] for i, (q, s) in enumerate(steps)]}


def _run(mode, *, detect):
    flag = (lambda q: q) if detect else (lambda q: None)
    accounts = [_account(f"benign-{i:03d}", f"benign-{i:03d}", "benign", False, 200, 0.01 * i) for i in range(25)]
    accounts[0]["scores"]["prada"] = float("nan")  # NaN must reach JSON as null
    accounts += [
        _account("jbda", "jbda", "jacobian", True, 500, 0.9, flag=flag(250), reasons=["PRADA 0.93 > 0.9"]),
        _account("swarm-1", "swarm", "sybil", True, 300, 0.3),
        _account("swarm-2", "swarm", "sybil", True, 300, 0.7, flag=flag(150),
                 reasons=["ADD 41.3 > 11.6 at 60 distinct queries"]),
        _account("knockoff", "knockoff", "knockoff", True, 400, 0.35),  # never caught
    ]
    if not detect:
        for a in accounts:
            a["scores"], a["timeline"] = {}, []
    fid = {"off": 0.95, "shadow": 0.94, "default": 0.7}[mode]
    clones = [{"actor": actor, "kind": kind, "surrogate": "mlp", "answers": "probabilities",
               "curve": [{"queries": q, "fidelity": fid * q / 5000, "accuracy": fid * q / 5100}
                         for q in (250, 1000, 5000 if mode != "default" else 2500)],
               "watermark": None if mode == "off" else {"probes": 26, "matched": 25, "log2_p": -74.7}}
              for actor, kind in (("jbda", "jacobian"), ("knockoff", "knockoff"))]
    return {"mode": mode, "queries": 8200, "alerts": 2 if detect else 0, "accounts": accounts, "clones": clones,
            "benign": {"model_accuracy": 0.97, "served_accuracy": 0.966, "accuracy_loss": 0.004, "queries": 5000},
            "independent": {"watermark": {"probes": 26, "matched": 0, "log2_p": -0.0}}}


SCENARIO = {"name": "default", "seed": 7, "description": "Three thieves and 25 benign users.",
            "actors": [], "config": {"MODELGUARD_MODE": "default"},
            "latency": {"bare_ms": 1.2, "guarded_ms": 1.5, "ratio": 1.25}}


@pytest.fixture
def runs():
    return {"off": _run("off", detect=False), "shadow": _run("shadow", detect=True),
            "default": _run("default", detect=True)}


def test_report_json_round_trips_and_nan_is_null(tmp_path, runs):
    report = write_report(tmp_path / "out", SCENARIO, runs)
    text = (tmp_path / "out" / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == report
    assert report["runs"]["default"]["accounts"][0]["scores"]["prada"] is None
    assert report["leaderboard"] and report["primary_mode"] == "default"
    det = report["metrics"]["default"]["detection"]
    assert det["detectors"]["prada"]["n_benign"] == 24
    assert report["metrics"]["off"]["detection"]["flags"]["precision"] is None  # nothing flagged: undefined
    assert report["command"] == f"flask --app example_app modelguard evaluate --scenario default --seed 7 " \
                                f"--out {tmp_path / 'out'}"


def test_markdown_has_every_attacker_and_marks_the_uncaught(tmp_path, runs):
    write_report(tmp_path, SCENARIO, runs, plots=False)
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# ModelGuard evaluation — scenario `default`, seed 7")
    assert "flask --app example_app modelguard evaluate --scenario default --seed 7 --out" in md
    rows = {name: next(line for line in md.splitlines() if line.startswith(f"| {name} |"))
            for name in ("jbda", "swarm", "knockoff")}
    assert "🔴 not caught" in rows["knockoff"] and "not caught" not in rows["jbda"]
    assert "✅ caught" in rows["swarm"] and "ADD 41.3 > 11.6" in rows["swarm"]
    assert "0.950" in rows["jbda"] and "0.350 (@2,500)" in rows["jbda"] and "log2 p = -74.7" in rows["jbda"]
    for section in ("## Benign users", "## Detectors", "## Alerts", "## Latency", "TPR@1%FPR"):
        assert section in md
    assert "independently trained model, tested against the thieves' evidence: 0/26" in md
    assert "plots were not requested" in md


def test_plots_are_pngs_linked_from_the_markdown(tmp_path, runs):
    report = write_report(tmp_path, SCENARIO, runs)
    md = (tmp_path / "report.md").read_text()
    for name in ("roc", "fidelity", "timelines"):
        path = tmp_path / f"{name}.png"
        data = path.read_bytes()
        assert data[:8] == PNG and len(data) > 10_000, name
        assert report["plots"][name] == f"{name}.png" and f"]({name}.png)" in md


def test_no_plots_writes_no_png(tmp_path, runs):
    report = write_report(tmp_path, SCENARIO, runs, plots=False)
    assert not list(tmp_path.glob("*.png")) and set(report["plots"].values()) == {None}
    assert {p.name for p in tmp_path.iterdir()} == {"report.json", "report.md"}


def test_empty_plot_data_is_skipped_and_said(tmp_path):
    run = _run("off", detect=False)
    run["clones"] = []
    report = write_report(tmp_path, {"name": "quiet", "seed": 0}, {"off": run})
    assert not list(tmp_path.glob("*.png")) and set(report["plots"].values()) == {None}
    md = (tmp_path / "report.md").read_text()
    assert md.count("skipped —") == 3 and "🔴 not caught" in md


def test_missing_matplotlib_is_a_clear_error_unless_plots_are_off(tmp_path, runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes the import fail
    with pytest.raises(RuntimeError, match="pip install matplotlib"):
        write_report(tmp_path / "a", SCENARIO, runs)
    assert not (tmp_path / "a").exists()
    write_report(tmp_path / "b", SCENARIO, runs, plots=False)
    assert (tmp_path / "b" / "report.md").exists()


LOFO = {"method": "offline re-scoring", "mode": "shadow", "threshold": 0.5, "benign_accounts": 25,
        "benign_flag_rate": 0.0,
        "families": [
            {"family": "jacobian", "accounts": 1, "train_accounts_removed": 1,
             "in_family": {"accounts": 1, "flagged": 1, "queries_to_flag": 250.0, "per_account": {"jbda": 250}},
             "held_out": {"accounts": 1, "flagged": 0, "queries_to_flag": None, "per_account": {"jbda": None}},
             "benign_flag_rate": 0.04},
            {"family": "sybil", "accounts": 2, "train_accounts_removed": 2,
             "in_family": {"accounts": 2, "flagged": 2, "queries_to_flag": 150.0, "per_account": {}},
             "held_out": None, "benign_flag_rate": None, "error": "need at least 5 malicious accounts"}]}


def test_lofo_table(tmp_path, runs):
    report = write_report(tmp_path / "out", {**SCENARIO, "lofo": True}, runs, plots=False, lofo=LOFO)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["lofo"]["families"][0]["family"] == "jacobian"
    assert report["command"].endswith("--lofo")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Leave one family out" in md
    assert "| jacobian | 1 | 0/1 | — | 1/1 | 250 | 4.00% |" in md
    assert "| sybil | 2 | — | — | 2/2 | 150 | not trained: need at least 5 malicious accounts |" in md
    assert "`shadow` run" in md
    assert "## Leave one family out" not in (write_report(tmp_path / "plain", SCENARIO, runs, plots=False)
                                             and (tmp_path / "plain" / "report.md").read_text())
