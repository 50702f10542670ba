"""Every keyed wrong answer is evidence: the poison and misinformation answers
of flagged accounts are recorded with their null rate (once an input, at most
``MODELGUARD_EVIDENCE_LIMIT`` an account), and a clone trained on them is
proven ours, over HTTP on the example app with its defaults; a model
independent of the key is not, whatever it answers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from flask_modelguard import evidence
from flask_modelguard.ownership import poisson_binomial_tail_log2, select_probes, verify
from flask_modelguard.transforms import Answer, KeyedRandom, Misinformation, RandomPoison, Watermark, apply

from .test_evidence import at_once
from .test_ownership import _query, _serve, clone_and_independent, noisy_digits


def _answers(n: int = 400, k: int = 10, seed: int = 0) -> tuple[Answer, KeyedRandom]:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.3), n)
    return Answer.of(p), KeyedRandom.for_inputs(b"k" * 32, 1, [f"fp{i}" for i in range(n)])


def test_misinformation_marks_every_moved_answer_with_the_draws_distribution():
    answer, rng = _answers()
    out = Misinformation()(answer, rng)
    moved = out.labels != answer.labels
    assert moved.all()  # strength 1: every answer is a wrong one
    assert (out.mark_labels == out.labels).all()
    dist = out.mark_dist
    assert np.allclose(dist.sum(axis=1), 1.0) and (dist[np.arange(len(dist)), answer.labels] == 0).all()
    assert (dist[np.arange(len(dist)), out.labels] > 0).all()


def test_weak_misinformation_marks_only_what_it_moved_and_only_classes_that_would_have_won():
    answer, rng = _answers()
    moved_at = {}
    for strength in (0.3, 0.6):
        out = Misinformation(strength=strength)(answer, rng)
        moved = out.labels != answer.labels
        assert 0 < moved.sum() < len(moved)
        marked = out.mark_labels >= 0  # moved to the drawn class (a blend may move it to a third one)
        assert 0 < marked.sum() and (marked <= moved).all()
        assert (out.mark_labels[marked] == out.labels[marked]).all()
        # some classes could not have won at this strength, so their chance is 0 in the null
        assert (out.mark_dist[marked] == 0).sum() > marked.sum()
        moved_at[strength] = moved.sum()
    assert moved_at[0.3] < moved_at[0.6]


def test_poison_and_watermark_marks_are_uniform_over_the_other_classes():
    answer, rng = _answers()
    poisoned = RandomPoison(p=0.5)(answer, rng)
    hit = poisoned.mark_labels >= 0
    assert 100 < hit.sum() < 300 and (poisoned.labels[hit] != answer.labels[hit]).all()
    assert np.allclose(poisoned.mark_dist[hit][poisoned.mark_dist[hit] > 0], 1 / 9)
    marked = Watermark(0.2)(answer, rng)
    assert (marked.mark_labels >= 0).sum() == marked.watermarked.sum()
    # the flagged pipeline: a watermark first, then misinformation over it
    both = apply((Watermark(0.2), Misinformation()), answer, rng)
    assert (both.mark_kinds == 2).all() and (both.mark_labels == both.labels).all()


def _protected_marks(n: int = 3000, k: int = 10):
    """The evidence a flagged account's answers leave, as the request path records it."""
    from flask_modelguard.protection import OutputProtector, RouteOptions
    from flask_modelguard.transforms import OutputPolicy

    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.full(k, 0.5), n)
    protector = OutputProtector(b"s" * 32)
    policy = OutputPolicy(suspicious=(Misinformation(),), watermark=0.005)
    payload = {"predictions": [{"label": int(r.argmax()), "probabilities": r.tolist()} for r in p]}
    body = {"instances": [[float(i)] for i in range(n)]}
    options = RouteOptions()
    _, marks, _, _ = protector.protect(payload, body, 7, True, 0.9, policy, options)
    return p, marks


def test_a_flagged_accounts_answers_are_recorded_with_their_kind_and_null_rate():
    p, marks = _protected_marks()
    assert len(marks) > 2900
    kinds = {mark[5] for mark in marks}
    assert kinds == {"misinformation"}
    rates = np.array([mark[6] for mark in marks])
    assert (rates >= 1 / 9 - 1e-9).all() and (rates < 1).all() and rates.mean() > 1 / 9


@pytest.mark.parametrize("suspect", ["runner-up", "third", "uniform", "model"])
def test_the_null_rate_bounds_any_suspect_that_does_not_know_the_key(suspect):
    """Whatever a keyless model answers (the model's own runner-up, the
    likeliest tell; its third class; a random wrong class; the model's label),
    it agrees with misinformation evidence at most at the recorded rates."""
    p, marks = _protected_marks(6000)
    index = {float(mark[1][0]): mark for mark in marks}
    rows = np.array(sorted(int(i) for i in index))
    ranked = np.argsort(-p[rows], axis=1)
    pick = {"runner-up": ranked[:, 1], "third": ranked[:, 2], "model": ranked[:, 0],
            "uniform": (ranked[:, 0] + np.random.default_rng(3).integers(1, 10, len(rows))) % 10}[suspect]
    served = np.array([index[float(i)][2] for i in rows])
    rates = np.array([index[float(i)][6] for i in rows])
    matches = int((pick == served).sum())
    assert matches <= rates.sum() + 4 * np.sqrt((rates * (1 - rates)).sum())
    records = [{"fingerprint": str(i), "served_label": int(s), "null_rate": float(r), "n_classes": 10}
               for i, s, r in zip(rows, served, rates)]
    assert not verify("x", records, pick.tolist()).claimed


def test_poisson_binomial_tail_matches_direct_enumeration():
    rates = [0.1, 0.5, 0.3, 0.9, 0.05]
    for k in range(len(rates) + 2):
        direct = 0.0
        for bits in range(1 << len(rates)):
            chosen = [(bits >> i) & 1 for i in range(len(rates))]
            if sum(chosen) >= k:
                direct += float(np.prod([r if c else 1 - r for r, c in zip(rates, chosen)]))
        expected = -np.inf if direct == 0 else np.log2(direct)
        assert poisson_binomial_tail_log2(k, rates) == pytest.approx(expected, abs=1e-9)
    assert poisson_binomial_tail_log2(1000, [0.2] * 1000) == pytest.approx(1000 * np.log2(0.2))


def test_probes_are_one_an_input_and_the_lowest_null_rates_first():
    records = [{"fingerprint": f"f{i % 7}", "null_rate": 0.1 * (i % 7 + 1), "n_classes": 10, "id": i}
               for i in range(20)]
    first = select_probes(records)
    assert [r["id"] for r in first] == list(range(7))
    assert [r["id"] for r in select_probes(records, 3)] == [0, 1, 2]
    records[5]["null_rate"] = 0.01
    assert [r["id"] for r in select_probes(records, 2)] == [0, 5]  # still in chain order


@pytest.fixture(scope="module")
def misinformed(tmp_path_factory, model_cache):
    """A flagged thief queries the example app with its defaults (misinformation
    for flagged accounts) and trains an MLP on what it was served."""
    from example_app import create_app, guard
    from example_app.model import split

    tmp = tmp_path_factory.mktemp("deception")
    app = create_app({"MODEL_CACHE_DIR": model_cache, "SECRET_KEY": "deception-test",
                      "MODELGUARD_DATABASE_URL": f"sqlite:///{tmp}/d.db", "MODELGUARD_EVIDENCE_LIMIT": 1200})
    X_train, X_test, y_train, _ = split()
    rng = np.random.default_rng(11)
    with app.app_context():
        for name in ("thief", "honest"):
            guard.create_account(name, limits="1000000/second")
        keys = {name: guard.issue_key(name) for name in ("thief", "honest")}
        guard.update_account("thief", flagged=True)
    client = app.test_client()
    X_thief = noisy_digits(rng, X_test, 1500)
    y_served = _query(client, keys["thief"], np.vstack([X_thief, X_thief[:300]]))[:1500]  # repeats: one record
    _query(client, keys["honest"], X_test[:500])
    guard.state(app).worker.flush()
    clone, independent = clone_and_independent(X_thief, y_served, X_train, y_train)
    yield app, guard, clone, independent
    guard.close(app)


def test_a_clone_of_a_flagged_account_is_proven_from_its_misinformation_over_http(misinformed):
    app, guard, clone, independent = misinformed
    records = guard.state(app).repository.evidence_records("thief")
    kinds = [r["kind"] for r in records]
    assert kinds.count("misinformation") == 1200  # the limit; the repeats added nothing
    assert len({r["fingerprint"] for r in records}) == len(records)
    assert guard.stats(app)["evidence_capped"] > 0
    server, url = _serve(lambda X: clone.predict(X / 16))
    try:
        with app.app_context():
            ranked = guard.attribute(url)
    finally:
        server.shutdown()
    assert ranked[0].account == "thief" and ranked[0].claimed, ranked[0].summary()
    with app.app_context():
        innocent = guard.verify_watermark("thief", lambda xs: independent.predict(np.asarray(xs) / 16))
    assert not innocent.claimed and innocent.log2_p > -10, innocent.summary()


def test_the_exported_bundle_checks_and_tests_offline(misinformed, tmp_path):
    app, guard, clone, _ = misinformed
    bundle = evidence.bundle("thief", guard.state(app).repository.evidence_records("thief"), "now")
    assert evidence.check(bundle).valid
    assert {r["kind"] for r in bundle["records"]} >= {"misinformation"}
    probes = evidence.probes(bundle)
    labels = clone.predict(np.asarray([r["input"] for r in probes]) / 16).tolist()
    assert evidence.ownership_test(bundle, labels).claimed
    bundle["records"][3]["null_rate"] = 0.01  # a rate made smaller after the fact breaks the chain
    assert evidence.check(bundle).broken_at == 3


def _deception_rows(account_id: int, fingerprints: list[str], kind: str = "misinformation") -> list[dict[str, Any]]:
    base = {"key_id": 1, "route": "predict", "status": 200, "latency_ms": 1.0, "n_instances": 1, "fingerprint": None,
            "labels": None, "top_confidences": None, "input": None, "canary": False}
    return [{**base, "account_id": account_id, "ts": 1000.0 + i, "watermarks": [
        {"account_id": account_id, "route": "predict", "ts": 1000.0 + i, "fingerprint": fp, "input": [float(i)],
         "served_label": 4, "model_label": 3, "n_classes": 10, "kind": kind, "null_rate": 0.25}]}
        for i, fp in enumerate(fingerprints)]


def test_deception_evidence_is_kept_once_an_input_up_to_the_limit_from_writers_at_once(make_guarded):
    g = make_guarded(MODELGUARD_EVIDENCE_LIMIT=30)
    name, _ = g.account("flagged")
    repository = g.guard.state(g.app).repository
    account_id = repository.get_account(name)["id"]

    def write(worker: int) -> None:
        for batch in range(6):  # inputs 0..19 from every writer (repeats), and 10 of its own a batch
            repository.insert_events(_deception_rows(account_id, [f"in{n}" for n in range(20)]))
            repository.insert_events(_deception_rows(account_id, [f"w{worker}-{batch}-{n}" for n in range(10)]))

    assert at_once(write, 3) == []
    repository.insert_events(_deception_rows(account_id, ["late-watermark"], kind="watermark"))
    records = repository.evidence_records(name)
    deception = [r for r in records if r["kind"] == "misinformation"]
    assert len(deception) == 30 and len({r["fingerprint"] for r in deception}) == 30
    assert [r["fingerprint"] for r in records if r["kind"] == "watermark"] == ["late-watermark"]  # not bounded
    assert repository.evidence_capped > 0
    found = evidence.check(evidence.bundle(name, records, "now"))
    assert found.valid, found.summary()
