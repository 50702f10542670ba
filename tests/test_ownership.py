"""Ownership verification: the binomial test, and end to end on the example app:
a clone trained on a watermarked account's answers is identified and
attributed; independent models and other accounts are not."""

from __future__ import annotations

import json
import math
import threading
import warnings

import numpy as np
import pytest
from flask import Flask, request
from werkzeug.serving import make_server

from flask_modelguard.ownership import (
    binomial_tail_log2,
    empirical_null_rate,
    file_suspect,
    probes_needed,
    verify,
)


def test_binomial_tail_matches_direct_sums():
    for n, p in [(10, 0.5), (25, 1 / 9), (40, 0.3)]:
        for k in range(n + 1):
            direct = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
            assert binomial_tail_log2(k, n, p) == pytest.approx(math.log2(direct), abs=1e-9)
    assert binomial_tail_log2(0, 5, 0.1) == 0.0 and binomial_tail_log2(6, 5, 0.1) == -math.inf
    assert binomial_tail_log2(200, 200, 1 / 9) == pytest.approx(200 * math.log2(1 / 9))  # no underflow


def test_probes_needed_for_ten_classes():
    assert probes_needed(1.0, 1 / 9) == 21  # (1/9)^21 < 2^-64 <= (1/9)^20
    assert probes_needed(0.5, 1 / 9) == 89
    assert probes_needed(0.05, 1 / 9, max_probes=500) is None  # below chance: never


def records(labels, n_classes=10):
    return [{"fingerprint": f"fp{i}", "input": [i], "served_label": lab, "n_classes": n_classes} for i, lab in enumerate(labels)]


def test_verify_claims_only_below_the_threshold():
    recs = records([3] * 30)
    assert verify("a", recs, [3] * 30).claimed
    v = verify("a", recs, [3] * 10 + [4] * 20)
    assert (v.matches, v.probes, v.claimed) == (10, 30, False)
    assert verify("a", recs, ["3"] * 30).matches == 0  # names and indices are not confused
    assert not verify("a", [], []).claimed
    with pytest.raises(ValueError):
        verify("a", recs, [3])


def test_empirical_null_rate_is_smoothed():
    recs = records([1, 2, 3, 4])
    assert empirical_null_rate(recs, [lambda xs: [0] * len(xs)]) == pytest.approx(1 / 6)
    assert empirical_null_rate(recs, [lambda xs: [1, 2, 0, 0]]) == pytest.approx(3 / 6)


def test_file_suspect_list_or_mapping(tmp_path):
    recs = records([1, 2])
    (tmp_path / "list.json").write_text("[1, 5]")
    (tmp_path / "map.json").write_text(json.dumps({"fp1": 2, "fp0": 1}))
    assert file_suspect(str(tmp_path / "list.json"), recs) == [1, 5]
    assert file_suspect(str(tmp_path / "map.json"), recs) == [1, 2]
    (tmp_path / "short.json").write_text("[1]")
    with pytest.raises(ValueError):
        file_suspect(str(tmp_path / "short.json"), recs)


# -- end to end ------------------------------------------------------------------


def _serve(predict):
    app = Flask("suspect")

    @app.post("/predict")
    def route():
        X = np.asarray(request.get_json()["instances"], dtype=float)
        return {"predictions": [{"label": int(label)} for label in predict(X)]}

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/predict"


def _query(client, key, X, batch=100):
    labels = []
    for start in range(0, len(X), batch):
        r = client.post("/predict", json={"instances": X[start : start + batch].tolist()},
                        headers={"X-API-Key": key})
        assert r.status_code == 200, r.get_json()
        labels += [p["label"] for p in r.get_json()["predictions"]]
    return np.array(labels)


def noisy_digits(rng: np.random.Generator, X: np.ndarray, n: int) -> np.ndarray:
    """Knockoff-style queries: ``n`` held-out digits with pixel noise."""
    return np.clip(X[rng.integers(0, len(X), n)] + rng.normal(0, 1.5, (n, 64)), 0, 16).round(2)


def clone_and_independent(X_thief, y_served, X_train, y_train):
    """An MLP trained on what the thief was served, and one on the owner's own labelled digits."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clone = MLPClassifier(hidden_layer_sizes=(128,), max_iter=400, random_state=0).fit(X_thief / 16, y_served)
        independent = MLPClassifier(hidden_layer_sizes=(128,), max_iter=400, random_state=1).fit(X_train / 16, y_train)
    return clone, independent


@pytest.fixture(scope="module")
def stolen(tmp_path_factory, model_cache):
    """A thief and an honest user query the example server (0.5% watermark,
    twice the default); the thief trains an MLP on its answers."""
    from example_app import create_app, guard
    from example_app.model import split

    tmp = tmp_path_factory.mktemp("ownership")
    app = create_app({"MODEL_CACHE_DIR": model_cache, "SECRET_KEY": "ownership-test",
                      "MODELGUARD_DATABASE_URL": f"sqlite:///{tmp}/o.db",
                      "MODELGUARD_DETECTION": False,  # flagging the thief mid-way would change its answers
                      "MODELGUARD_WATERMARK": 0.005})
    X_train, X_test, y_train, _ = split()
    rng = np.random.default_rng(7)
    with app.app_context():
        for name in ("thief", "honest"):
            guard.create_account(name, limits="1000000/second")
        keys = {name: guard.issue_key(name) for name in ("thief", "honest")}
    client = app.test_client()
    X_thief = noisy_digits(rng, X_test, 6000)
    y_served = _query(client, keys["thief"], X_thief)
    _query(client, keys["honest"], noisy_digits(rng, X_test, 3000))
    clone, independent = clone_and_independent(X_thief, y_served, X_train, y_train)
    yield app, guard, clone, independent
    guard.close(app)


def test_clone_is_identified_from_at_most_250_probes(stolen):
    app, guard, clone, independent = stolen
    with app.app_context():
        verdict = guard.verify_watermark("thief", lambda xs: clone.predict(np.asarray(xs) / 16), max_probes=250)
        assert 20 <= verdict.probes <= 250
        assert verdict.claimed and verdict.p_value < 2.0**-64, verdict.summary()
        innocent = guard.verify_watermark("thief", lambda xs: independent.predict(np.asarray(xs) / 16))
        assert not innocent.claimed and innocent.log2_p > -10, innocent.summary()


def test_clone_is_attributed_to_the_account_it_came_from_over_http(stolen):
    app, guard, clone, _ = stolen
    server, url = _serve(lambda X: clone.predict(X / 16))
    try:
        with app.app_context():
            results = guard.attribute(url)
    finally:
        server.shutdown()
    by_account = {r.account: r for r in results}
    assert by_account["thief"].claimed and results[0].account == "thief"
    assert not by_account["honest"].claimed, by_account["honest"].summary()


def test_cli_export_and_verify_from_a_predictions_file(stolen, tmp_path):
    app, _, clone, independent = stolen
    runner = app.test_cli_runner()
    out = tmp_path / "wm.json"
    assert runner.invoke(args=["modelguard", "export-watermarks", "thief", str(out)]).exit_code == 0
    exported = json.loads(out.read_text())
    for model, claimed in ((clone, True), (independent, False)):
        labels = model.predict(np.asarray(exported["inputs"]) / 16).tolist()
        (tmp_path / "labels.json").write_text(json.dumps(labels))
        result = runner.invoke(args=["modelguard", "verify-watermark", "thief", "--predictions", str(tmp_path / "labels.json")])
        assert result.exit_code == 0, result.output
        assert ("CLAIMED" in result.output) is claimed


def test_mixed_routes_use_each_probes_own_null_rate():
    from flask_modelguard.ownership import binomial_tail_log2

    binary = [{"fingerprint": f"b{i}", "input": [i], "served_label": 1, "n_classes": 2} for i in range(40)]
    ten = [{"fingerprint": f"t{i}", "input": [i], "served_label": 1, "n_classes": 10} for i in range(5)]
    # an honest binary model that errs on every probe matches every binary watermark:
    v = verify("a", binary + ten, [1] * 40 + [0] * 5)
    assert v.log2_p == pytest.approx(0.0, abs=1e-9) and not v.claimed  # binary probes are worth nothing
    v = verify("a", binary + ten, [1] * 45)
    assert v.log2_p == pytest.approx(binomial_tail_log2(5, 5, 1 / 9))
    assert verify("a", records([1, 2]), [1.0, 2.7]).matches == 1


def test_http_suspect_bounds_what_a_suspect_can_send(tmp_path):
    """A suspect answering too much is refused, not read into memory."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from flask_modelguard.ownership import http_suspect

    class Flood(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = b'{"predictions": [' + b'{"label": 1},' * 10000 + b'{"label": 1}]}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Flood)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/predict"
        with pytest.raises(ValueError, match="more than 1000 bytes"):
            http_suspect(url, max_bytes=1000)([[1.0]])
        with pytest.raises(ValueError, match="answered 10001 predictions for 1 inputs"):
            http_suspect(url)([[1.0]])
        with pytest.raises(ValueError, match="http"):
            http_suspect("file:///etc/passwd")
    finally:
        server.shutdown()
        server.server_close()


def test_http_suspect_that_trickles_its_answer_is_cut_off_at_the_deadline():
    """A byte now and then, each within the socket timeout, must not hold the verifier past the deadline."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from flask_modelguard.ownership import http_suspect

    class Trickle(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = b'{"predictions": [{"label": 1}]}' + b" " * 200
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for byte in body:
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.2)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        started = time.monotonic()
        with pytest.raises(ValueError, match="took more than 2 s"):
            http_suspect(f"http://127.0.0.1:{server.server_port}/predict", timeout=1.0, deadline=2.0)([[1.0]])
        assert time.monotonic() - started < 4.0  # the deadline, plus at most one read's timeout
    finally:
        server.shutdown()
        server.server_close()
