"""Output protection through the extension: route policies, flagged accounts,
watermark records, canaries."""

from __future__ import annotations

import numpy as np
import pytest
from flask import jsonify

from flask_modelguard import ModelGuard

from .conftest import PROBS


def probs_of(r):
    return r.get_json()["probabilities"]


def test_route_transforms_apply_to_ordinary_accounts(make_guarded):
    g = make_guarded(MODELGUARD_OUTPUT=["round(1)"])
    _, key = g.account()
    body = g.predict(key).get_json()
    assert body["label"] == 1 and body["probabilities"] == np.round(PROBS, 1).tolist()


def test_tier_output_replaces_the_default(make_guarded):
    g = make_guarded(MODELGUARD_OUTPUT=["round(1)"], MODELGUARD_TIER_OUTPUT={"pro": ["label_only"]})
    _, free = g.account(tier="free")
    _, pro = g.account(tier="pro")
    assert "probabilities" in g.predict(free).get_json()
    assert g.predict(pro).get_json() == {"label": 1}


def test_route_option_wins_and_batches_are_transformed(make_guarded):
    g = make_guarded(MODELGUARD_OUTPUT=["round(1)"])

    @g.app.post("/top")
    @g.guard.protect(output=["top_k(2, mode='drop')"])
    def top():
        return {"predictions": [{"label": 1, "probabilities": PROBS}] * 2}

    _, key = g.account()
    r = g.client.post("/top", json={"instances": [[1], [2]]}, headers={"X-API-Key": key})
    preds = r.get_json()["predictions"]
    assert [p["classes"] for p in preds] == [[0, 1], [0, 1]]
    assert preds[0]["probabilities"] == [0.05, 0.7]


def test_noise_is_deterministic_per_account_and_input(make_guarded):
    g = make_guarded(MODELGUARD_OUTPUT=["gaussian(0.05)"])
    _, a = g.account()
    _, b = g.account()
    first, again, other = probs_of(g.predict(a)), probs_of(g.predict(a)), probs_of(g.predict(b))
    assert first == again and first != other and first != PROBS
    assert max(range(10), key=first.__getitem__) == 1  # argmax kept
    assert probs_of(g.predict(a, {"features": [9, 9, 9]})) != first


def test_flagged_accounts_get_the_suspicious_policy_and_others_never(make_guarded):
    g = make_guarded(MODELGUARD_SUSPICIOUS_OUTPUT=["poison(1.0)"])
    name, flagged = g.account(limits="1000/second")
    _, benign = g.account(limits="1000/second")
    with g.app.app_context():
        g.guard.update_account(name, flagged=True)
    bodies = [{"features": [i]} for i in range(30)]
    poisoned = [g.predict(flagged, b).get_json() for b in bodies]
    clean = [g.predict(benign, b).get_json() for b in bodies]
    assert all(c == {"label": 1, "probabilities": PROBS} for c in clean)
    assert all(p["probabilities"] != PROBS for p in poisoned)
    assert {p["label"] for p in poisoned} != {1}  # random labels
    with g.app.app_context():
        g.guard.update_account(name, flagged=False)
    assert g.predict(flagged).get_json() == {"label": 1, "probabilities": PROBS}


def test_misinformation_is_the_default_for_flagged_accounts(make_guarded):
    g = make_guarded()
    name, key = g.account()
    with g.app.app_context():
        g.guard.update_account(name, flagged=True)
    body = g.predict(key).get_json()
    assert body["label"] != 1 and abs(sum(body["probabilities"]) - 1) < 1e-9


def test_jsonify_responses_and_tuples_are_protected(make_guarded):
    g = make_guarded(MODELGUARD_OUTPUT=["label_only"])

    @g.app.post("/jsonified")
    @g.guard.protect
    def jsonified():
        return jsonify(label=1, probabilities=PROBS)

    @g.app.post("/tuple")
    @g.guard.protect
    def tupled():
        return {"label": 1, "probabilities": PROBS}, 201

    @g.app.post("/error")
    @g.guard.protect
    def error():
        return {"label": 1, "probabilities": PROBS}, 500

    _, key = g.account()
    h = {"X-API-Key": key}
    assert g.client.post("/jsonified", json={}, headers=h).get_json() == {"label": 1}
    r = g.client.post("/tuple", json={}, headers=h)
    assert r.status_code == 201 and r.get_json() == {"label": 1}
    assert "probabilities" in g.client.post("/error", json={}, headers=h).get_json()


def test_unrecognised_answers_pass_through_and_are_counted(make_guarded):
    g = make_guarded(MODELGUARD_OUTPUT=["round(1)"])

    @g.app.post("/odd")
    @g.guard.protect
    def odd():
        return {"answer": "forty-two"}

    _, key = g.account()
    r = g.client.post("/odd", json={}, headers={"X-API-Key": key})
    assert r.status_code == 200 and r.get_json() == {"answer": "forty-two"}
    assert ModelGuard.state(g.app).protector.unrecognised == 1


def test_path_adapter_option(make_guarded):
    g = make_guarded(MODELGUARD_OUTPUT=["top_k(1)"])

    @g.app.post("/nested")
    @g.guard.protect(adapter="result.scores")
    def nested():
        return {"result": {"scores": PROBS}, "model": "v1"}

    _, key = g.account()
    out = g.client.post("/nested", json={}, headers={"X-API-Key": key}).get_json()
    assert out["model"] == "v1" and out["result"]["scores"] == [0.0, 0.7] + [0.0] * 8


def test_watermark_answers_are_recorded_with_their_inputs(make_guarded):
    g = make_guarded(MODELGUARD_WATERMARK=0.2)
    name, key = g.account(limits="1000/second")
    served = {i: g.predict(key, {"features": [i, 0.5]}).get_json()["label"] for i in range(100)}
    wrong = {i for i, label in served.items() if label != 1}
    assert 5 <= len(wrong) <= 40
    with g.app.app_context():
        g.guard.flush()
        records = g.guard.watermark_records(name, limit=None)
    assert {tuple(r["input"]) for r in records} == {(i, 0.5) for i in wrong}
    assert all(r["served_label"] == served[r["input"][0]] and r["model_label"] == 1 for r in records)
    assert all(r["n_classes"] == 10 for r in records)
    # the same question from the same account gets the same watermark answer
    assert all(g.predict(key, {"features": [i, 0.5]}).get_json()["label"] == served[i] for i in wrong)


def test_canary_input_flags_the_account(make_guarded):
    g = make_guarded(MODELGUARD_SUSPICIOUS_OUTPUT=["label_only"])
    name, key = g.account()
    _, other = g.account()
    with g.app.app_context():
        assert g.guard.add_canaries([[6, 6, 6], [7, 7, 7]], note="trap") == 2
        assert g.guard.add_canaries([[6, 6, 6]]) == 0
    assert "probabilities" in g.predict(key, {"features": [1, 2, 3]}).get_json()
    assert g.predict(key, {"features": [6, 6, 6]}).get_json() == {"label": 1}  # caught at once
    rows = g.rows(name)  # flushes: the worker flags the account
    assert [r["canary"] for r in rows] == [False, True]
    with g.app.app_context():
        account = ModelGuard.state(g.app).repository.get_account(name)
    assert account["flagged"] is True
    assert g.predict(key, {"features": [1, 2, 3]}).get_json() == {"label": 1}
    assert "probabilities" in g.predict(other, {"features": [1, 2, 3]}).get_json()


def test_canaries_reach_other_processes(make_guarded):
    g = make_guarded()
    other = make_guarded(MODELGUARD_DATABASE_URL=g.app.config["MODELGUARD_DATABASE_URL"])
    with g.app.app_context():
        g.guard.add_canaries([[5, 5]])
    assert not ModelGuard.state(other.app).protector.canaries
    ModelGuard.state(other.app).refresh_canaries()  # the worker does this every key-cache TTL
    assert len(ModelGuard.state(other.app).protector.canaries) == 1


def test_transform_failure_never_500s(make_guarded):
    from flask_modelguard.transforms import Transform

    class Broken(Transform):
        def __call__(self, answer, rng):
            raise RuntimeError("boom")

    g = make_guarded(MODELGUARD_OUTPUT=[Broken()])
    _, key = g.account()
    r = g.predict(key)
    assert r.status_code == 200 and r.get_json()["probabilities"] == PROBS
    assert ModelGuard.state(g.app).protector.errors == 1


@pytest.mark.parametrize("spec", ["nonsense(1)", "round(", "top_k(k=0)"])
def test_bad_transform_settings_fail_at_init(make_guarded, spec):
    from flask_modelguard.exc import InvalidValue

    with pytest.raises(InvalidValue):
        make_guarded(MODELGUARD_OUTPUT=[spec])


def test_poisoning_grows_with_the_account_score(make_guarded):
    g = make_guarded(MODELGUARD_SUSPICIOUS_OUTPUT=["poison(0.0, p_max=1.0)"])
    name, key = g.account(limits="1000/second")
    with g.app.app_context():
        g.guard.update_account(name, flagged=True, score=0.0)
    bodies = [{"features": [i, 1]} for i in range(40)]
    assert all(g.predict(key, b).get_json()["probabilities"] == PROBS for b in bodies)
    with g.app.app_context():
        g.guard.update_account(name, score=1.0)
        with pytest.raises(Exception, match="score"):
            g.guard.update_account(name, score=2.0)
    assert all(g.predict(key, b).get_json()["probabilities"] != PROBS for b in bodies)


def test_numbers_written_differently_are_the_same_input(make_guarded):
    g = make_guarded(MODELGUARD_OUTPUT=["gaussian(0.05)"])
    _, key = g.account()
    plain = probs_of(g.predict(key, {"features": [1, 0, 2.5]}))
    assert probs_of(g.predict(key, {"features": ["1", -0.0, "2.5"]})) == plain


def test_label_only_never_fails_open(make_guarded):
    g = make_guarded(MODELGUARD_OUTPUT=["label_only"])

    @g.app.post("/odd")
    @g.guard.protect
    def odd():
        return {"result": {"p": PROBS}, "logits": [1, 2]}

    _, key = g.account()
    r = g.client.post("/odd", json={}, headers={"X-API-Key": key})
    assert r.status_code == 502 and problem_of_type(r) == "answer-withheld"
    body = g.predict(key, {"features": [1]}).get_json()
    assert body == {"label": 1}


@pytest.mark.parametrize("mode, status", [("pass", 200), ("withhold", 502)])
def test_labels_an_adapter_cannot_rewrite_are_handled_alike_for_every_account(make_guarded, caplog, mode, status):
    """A path adapter cannot rewrite a label outside its path: watermarks and
    misinformation cannot run there. Flagged or not, the account gets the same
    status and form (no tell): in "pass" mode the transforms that keep labels
    (rounding), in "withhold" mode a 502; counted and logged once for the route."""
    g = make_guarded(MODELGUARD_UNRECOGNISED=mode, MODELGUARD_OUTPUT=["round(2)"], MODELGUARD_WATERMARK=0.5)

    @g.app.post("/nested")
    @g.guard.protect(adapter="result.scores")
    def nested():
        return {"result": {"scores": [0.123456, 0.876544]}, "label": 1}

    (flagged, key_f), (_, key_u) = g.account(), g.account()
    with g.app.app_context():
        g.guard.update_account(flagged, flagged=True)
    caplog.set_level("WARNING", logger="flask_modelguard")
    answers = [g.client.post("/nested", json={"features": [i]}, headers={"X-API-Key": key})
               for key in (key_f, key_u) for i in range(5)]
    assert {r.status_code for r in answers} == {status}
    if mode == "pass":
        assert all(r.get_json() == {"result": {"scores": [0.12, 0.88]}, "label": 1} for r in answers)
    assert g.guard.stats(g.app)["answers_unprotected_by_route"] == {"nested": 10}
    assert caplog.text.count("labels cannot be rewritten") == 1


def test_the_views_own_label_values_are_kept(make_guarded):
    g = make_guarded(MODELGUARD_OUTPUT=["gaussian(0.05)"])

    @g.app.post("/named")
    @g.guard.protect
    def named():
        return {"label": "dog", "probabilities": PROBS}

    _, key = g.account()
    out = g.client.post("/named", json={"features": [3]}, headers={"X-API-Key": key}).get_json()
    assert out["label"] == "dog" and out["probabilities"] != PROBS


def test_a_canary_takes_effect_before_the_worker_runs(make_guarded):
    g = make_guarded(MODELGUARD_SUSPICIOUS_OUTPUT=["label_only"], MODELGUARD_FLUSH_INTERVAL=3600)
    name, key = g.account()
    with g.app.app_context():
        g.guard.add_canaries([[4, 4]])
    g.predict(key, {"features": [4, 4]})
    assert g.predict(key, {"features": [1, 2]}).get_json() == {"label": 1}  # not yet flushed
    with g.app.app_context():
        g.guard.update_account(name, flagged=False)  # an operator clears it
    assert "probabilities" in g.predict(key, {"features": [1, 2]}).get_json()


def test_ambiguous_bodies_cannot_dodge_canaries(make_guarded):
    g = make_guarded(MODELGUARD_SUSPICIOUS_OUTPUT=["label_only"])
    _, key = g.account()
    with g.app.app_context():
        g.guard.add_canaries([{"features": [4, 4], "instances": [[9, 9]]}])
    # the whole ambiguous body is the input: the same body is caught
    assert g.predict(key, {"features": [4, 4], "instances": [[9, 9]]}).get_json() == {"predictions": [{"label": 1}]}


def test_cli_flag_and_canaries(make_guarded, tmp_path):
    g = make_guarded()
    name, key = g.account()
    runner = g.app.test_cli_runner()
    assert "flagged" in runner.invoke(args=["modelguard", "flag", name]).output
    assert g.predict(key).get_json()["label"] != 1  # misinformation
    assert "no longer" in runner.invoke(args=["modelguard", "flag", name, "--off"]).output
    (tmp_path / "c.json").write_text("[[1, 1], [2, 2]]")
    result = runner.invoke(args=["modelguard", "add-canaries", str(tmp_path / "c.json"), "--note", "x"])
    assert result.exit_code == 0 and "2 new" in result.output
    (tmp_path / "bad.json").write_text("{}")
    assert runner.invoke(args=["modelguard", "add-canaries", str(tmp_path / "bad.json")]).exit_code == 1


def problem_of_type(response):
    return response.get_json()["type"].rsplit("/", 1)[1]


@pytest.mark.parametrize("mode, status", [("pass", 200), ("withhold", 502)])
def test_an_answer_no_adapter_knows_is_loud_and_alike_for_every_account(make_guarded, caplog, mode, status):
    """A shape no adapter recognises: the same status for a flagged and an
    unflagged account (no tell), counted by route in stats, health and the
    metrics, logged once with the shape."""
    g = make_guarded(MODELGUARD_UNRECOGNISED=mode, MODELGUARD_OUTPUT=["round(2)"], MODELGUARD_WATERMARK=0.5)

    @g.app.post("/odd")
    @g.guard.protect
    def odd():
        return {"out": {"p": [[0.123456, 0.876544]]}}

    (flagged, key_f), (_, key_u) = g.account(), g.account()
    with g.app.app_context():
        g.guard.update_account(flagged, flagged=True)
        auth = {"Authorization": "Bearer " + g.guard.state(g.app).admin.create_token("ops")}
    caplog.set_level("WARNING", logger="flask_modelguard")
    answers = [g.client.post("/odd", json={"features": [i]}, headers={"X-API-Key": key})
               for key in (key_f, key_u) for i in range(3)]
    assert {r.status_code for r in answers} == {status}
    assert caplog.text.count("is not protected: no adapter recognises its shape") == 1
    assert '{"out": {"p": [[float, ...]]}}' in caplog.text
    assert g.guard.stats(g.app)["answers_unprotected_by_route"] == {"odd": 6}
    health = g.client.get("/modelguard/api/health", headers=auth).get_json()
    assert health["worker"]["answers_unprotected"] == 6
    metrics = g.client.get("/modelguard/metrics").get_data(as_text=True)
    assert 'modelguard_answers_unprotected_total{route="odd"} 6.0' in metrics


def test_results_with_class_names_are_recognised_and_protected(make_guarded):
    """The shape a newcomer's iris app returned (issue #12), now protected:
    rounded, watermarked, the class names kept."""
    g = make_guarded(MODELGUARD_OUTPUT=["round(2)"], MODELGUARD_WATERMARK=1.0)

    @g.app.post("/iris")
    @g.guard.protect
    def iris():
        return {"results": [{"class": "setosa", "scores": {"setosa": 0.91234, "versicolor": 0.05555,
                                                           "virginica": 0.03211}}]}

    _, key = g.account()
    out = g.client.post("/iris", json={"features": [5.1, 3.5, 1.4, 0.2]}, headers={"X-API-Key": key}).get_json()
    result = out["results"][0]
    assert set(result["scores"]) == {"setosa", "versicolor", "virginica"}
    assert all(v == round(v, 2) for v in result["scores"].values())
    assert result["class"] in ("versicolor", "virginica")  # every answer is a watermark at fraction 1
    assert g.guard.stats(g.app)["answers_unprotected"] == 0


@pytest.mark.parametrize("mode", ["pass", "withhold"])
def test_a_mixed_app_every_answer_protected_or_handled_by_mode(make_guarded, mode):
    """Six routes, five shapes the adapter knows and one it does not, 10
    requests each from a flagged and an unflagged account: the known ones are
    all rounded (protected), the unknown one all passed or all withheld."""
    g = make_guarded(MODELGUARD_UNRECOGNISED=mode, MODELGUARD_OUTPUT=["round(2)"])
    p = [0.123456, 0.3, 0.576544]
    shapes = {
        "single": {"label": 2, "probabilities": p},
        "predictions": {"predictions": [{"label": 2, "probabilities": p}]},
        "results": {"results": [{"class": "c", "scores": {"a": p[0], "b": p[1], "c": p[2]}}]},
        "bare": p,
        "vectors": [p],
        "unknown": {"out": {"p": [p]}},
    }
    for name, answer in shapes.items():
        g.app.add_url_rule(f"/{name}", name, g.guard.protect(lambda answer=answer: answer), methods=["POST"])
    (flagged, key_f), (_, key_u) = g.account(limits="1000/minute"), g.account(limits="1000/minute")
    with g.app.app_context():
        g.guard.update_account(flagged, flagged=True)
    outcome: dict[str, dict[str, int]] = {}
    for name in shapes:
        for key in (key_f, key_u):
            for i in range(10):
                r = g.client.post(f"/{name}", json={"features": [i]}, headers={"X-API-Key": key})
                if r.status_code == 502:
                    kind = "withheld"
                else:
                    text = r.get_data(as_text=True)
                    assert r.status_code == 200, text
                    kind = "passed" if "0.123456" in text else "protected"
                outcome.setdefault(name, {}).setdefault(kind, 0)
                outcome[name][kind] += 1
    for name in shapes:
        expected = ("passed" if mode == "pass" else "withheld") if name == "unknown" else "protected"
        assert outcome[name] == {expected: 20}, (name, outcome)
    assert g.guard.stats(g.app)["answers_unprotected_by_route"] == {"unknown": 20}


def test_protect_refuses_a_bad_watermark_or_mark_strength_when_the_route_is_declared():
    """Checked at decoration, not on every request (a 500 each time before)."""
    from flask_modelguard.exc import InvalidValue
    from flask_modelguard.protection import RouteOptions

    for options in ({"probability_mark": 0.7}, {"probability_mark": True}, {"probability_mark": float("nan")},
                    {"probability_mark": -0.1}, {"watermark": 1.5}, {"watermark": "0.1"}):
        with pytest.raises(InvalidValue, match="must be a number"):
            RouteOptions(**options)
    assert RouteOptions(probability_mark=0.2, watermark=0.0).probability_mark == 0.2
