"""The evaluation harness end to end on the example app: the bundled small
scenario (a few hundred queries per thief) through the real guard in three
modes, its report, and the CLI. The full scenario is a documented command
(docs/evaluation.md), not part of CI."""

from __future__ import annotations

import json

import pytest

from flask_modelguard.evaluate import load_scenario, run
from flask_modelguard.exc import InvalidValue


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, run("small", out=str(out))


def _fidelity(report, mode, actor):
    thieves = {t["actor"]: t for t in report["metrics"][mode]["theft"]["thieves"]}
    return thieves[actor]["final_fidelity"]


def test_report_files_and_structure(report):
    out, data = report
    assert json.loads((out / "report.json").read_text()) == data
    assert set(data["runs"]) == {"off", "shadow", "default"}
    markdown = (out / "report.md").read_text()
    for actor in ("uniform", "jbda", "knockoff"):
        assert f"| {actor} |" in markdown or f"{actor}" in markdown
    for name in ("roc.png", "fidelity.png", "timelines.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    default = data["runs"]["default"]
    assert default["queries"] == sum(a["queries"] for a in default["accounts"])
    assert {a["kind"] for a in default["accounts"]} >= {"benign", "benign-power", "random-uniform", "jacobian"}
    latency = data["scenario"]["latency"]
    assert latency["requests"] >= 900 and 0 < latency["bare_ms"] and latency["ratio"] == pytest.approx(
        latency["guarded_ms"] / latency["bare_ms"])
    assert "## Latency" in markdown


def test_guard_off_lets_a_thief_clone_the_model(report):
    _, data = report
    off = data["metrics"]["off"]["detection"]
    assert not any(a["caught"] for a in off["actors"])  # nothing runs: nothing is caught
    assert _fidelity(data, "off", "jbda") > 0.8


def test_default_policy_catches_the_random_thief_and_no_benign_user(report):
    _, data = report
    for mode in ("shadow", "default"):
        detection = data["metrics"][mode]["detection"]
        actors = {a["actor"]: a for a in detection["actors"]}
        assert actors["uniform"]["caught"] and actors["uniform"]["queries_to_detection"] <= 100
        assert detection["benign_flagged"] == 0
    # shadow mode only watches and marks: a suspicious account's watermark rate rises to 10%,
    # which costs its clone about as much, no more
    assert _fidelity(data, "shadow", "knockoff") > _fidelity(data, "off", "knockoff") - 0.12
    # the default policy poisons flagged accounts: the Knockoff clone collapses
    assert _fidelity(data, "default", "knockoff") < _fidelity(data, "off", "knockoff") - 0.3


def test_every_default_mode_clone_is_proven_ours_and_attributed_and_the_control_is_not(report):
    """Flagged thieves are misinformed: every one of those answers is evidence."""
    _, data = report
    run = data["runs"]["default"]
    for clone in run["clones"]:
        test = clone["watermark"]
        assert test is not None and test["claimed"] and test["log2_p"] < -64, (clone["actor"], test)
        assert test["attributed_to"] is not None and test["attributed_to"].split("#")[0] == clone["actor"], test
    control = run["independent"]["watermark"]
    assert control is not None and not control["claimed"] and control["log2_p"] > -10, control
    models = data["metrics"]["default"]["theft"]["independent_models"]
    assert models["models"] == 5 and models["accounts"] >= 4 and models["false_claims"] == 0, models


def test_probability_clones_are_tested_for_the_mark_and_never_attributed_elsewhere(report):
    """The example marks its probabilities: every thief's clone of the vectors is tested
    (claims at this scale are tests/test_served_marks.py's); none is claimed for another account."""
    out, data = report
    for mode in ("shadow", "default"):
        for clone in data["runs"][mode]["clones"]:
            mark = clone["mark"]
            assert mark is not None and mark["account"].split("#")[0] == clone["actor"], (mode, clone["actor"], mark)
            assert mark["log2_p"] <= 0 and mark["attributed_to"] in (None, mark["account"]), mark
    assert "; mark log2 p = " in (out / "report.md").read_text()


def test_benign_users_keep_their_accuracy(report):
    _, data = report
    benign = data["runs"]["default"]["benign"]
    assert benign["queries"] > 2000
    assert benign["accuracy_loss"] < 0.012  # the 0.25% watermark, measured on ~3,000 answers
    assert data["runs"]["off"]["benign"]["accuracy_loss"] == 0.0


def test_scenario_validation(tmp_path):
    with pytest.raises(InvalidValue, match="bundled"):
        load_scenario("no-such-scenario")
    with pytest.raises(InvalidValue, match="Unknown scenario field"):
        load_scenario({"name": "x", "actors": [{"kind": "benign"}], "colour": "red"})
    with pytest.raises(InvalidValue, match="mode"):
        load_scenario({"name": "x", "actors": [{"kind": "benign"}], "modes": ["sideways"]})
    with pytest.raises(InvalidValue, match="unknown actor kind"):
        load_scenario({"name": "x", "actors": [{"kind": "pirate"}]})
    with pytest.raises(InvalidValue, match="unknown parameter.*lam"):
        load_scenario({"name": "x", "actors": [{"kind": "knockoff", "lam": 0.1}]})
    scenario = load_scenario({"name": "x", "seed": 3, "actors": [{"kind": "benign", "count": 3, "budget": [10, 1000]}]})
    specs = scenario.expand()
    assert [s["name"] for s in specs] == ["benign-000", "benign-001", "benign-002"]
    assert all(10 <= s["budget"] <= 1000 for s in specs)
    assert specs == scenario.expand()  # drawn from the scenario's seed
    (tmp_path / "s.yaml").write_text("name: y\nactors:\n  - kind: knockoff\n    budget: 5\n")
    assert load_scenario(str(tmp_path / "s.yaml")).actors == [{"kind": "knockoff", "budget": 5}]


def test_cli_evaluate_writes_a_report(tmp_path, model_cache):
    from example_app import create_app

    scenario = {
        "name": "tiny", "seed": 1, "modes": ["default"], "checkpoints": [50], "latency_requests": 0,
        "actors": [{"kind": "benign", "count": 3, "budget": 30},
                   {"kind": "random-gaussian", "name": "gauss", "budget": 80}],
    }
    (tmp_path / "tiny.json").write_text(json.dumps(scenario))
    app = create_app({"MODEL_CACHE_DIR": model_cache, "MODELGUARD_DATABASE_URL": f"sqlite:///{tmp_path}/cli.db"})
    result = app.test_cli_runner().invoke(args=["modelguard", "evaluate", "--scenario", str(tmp_path / "tiny.json"),
                                                "--out", str(tmp_path / "out"), "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "report.md" in result.output
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert list(data["runs"]) == ["default"] and data["scenario"]["seed"] == 1
    assert not list((tmp_path / "out").glob("*.png"))
    bad = app.test_cli_runner().invoke(args=["modelguard", "evaluate", "--scenario", "nope"])
    assert bad.exit_code == 1 and "bundled" in bad.output


def test_lofo_end_to_end_matches_the_online_flags(tmp_path):
    """A tiny scenario with three thief families: the in-family re-scoring
    reproduces the shadow run's own ensemble flags, account by account."""
    scenario = {
        "name": "tiny-lofo", "seed": 2, "modes": ["shadow"], "checkpoints": [60], "latency_requests": 0,
        "actors": [{"kind": "benign", "count": 12, "budget": [30, 120], "interval": 120},
                   {"kind": "random-uniform", "count": 3, "budget": 120},
                   {"kind": "natural-patches", "count": 3, "budget": 120},
                   {"kind": "mixed", "count": 3, "budget": 120}],
    }
    report = run(scenario, out=str(tmp_path / "out"), plots=False, lofo=True)
    lofo = report["lofo"]
    assert report["scenario"]["train_seed"] == 1002 and lofo["mode"] == "shadow"
    assert [r["family"] for r in lofo["families"]] == ["mixed", "natural-patches", "random-uniform"]
    online = {a["name"]: a["first_flag_queries"] for a in report["runs"]["shadow"]["accounts"] if a["malicious"]}
    for row in lofo["families"]:
        assert row["accounts"] == 3 and row["train_accounts_removed"] == 3 and row["held_out"] is not None
        for name, queries in row["in_family"]["per_account"].items():
            assert queries == online[name], name
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Leave one family out" in md and "| natural-patches | 3 |" in md


def test_collusion_scenario_finds_each_sybil_as_a_group_and_groups_no_benign_user(tmp_path):
    """The bundled collusion scenario, its benign population cut to 60 users
    and the default mode only (CI time): every sybil's parts (15 queries each,
    never judged alone) flagged as group members, no benign account grouped."""
    scenario = load_scenario("collusion")
    scenario.actors[0]["count"] = 60
    scenario.modes = ["default"]
    data = run(scenario, out=str(tmp_path), plots=False)
    groups = data["metrics"]["default"]["detection"]["groups"]
    assert {r["actor"] for r in groups["actors"]} == {"sybil5", "sybil10", "sybil20", "sybil-random"}
    for row in groups["actors"]:
        assert row["grouped"] >= 0.8 * row["accounts"], row
    assert groups["benign_accounts"] == 60 and groups["benign_grouped"] == 0
    assert "## Colluding accounts" in (tmp_path / "report.md").read_text()
