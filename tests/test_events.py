from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from flask_modelguard.events import QueryEvent, fingerprint
from flask_modelguard.payload import instances, read_predictions

KEY = b"k" * 32
json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers(-10**6, 10**6) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=4),
    max_leaves=20,
)


def test_fingerprint_is_canonical_and_keyed():
    assert fingerprint({"b": [1, 2], "a": 3}, KEY) == fingerprint({"a": 3.0, "b": [1.0, 2.0]}, KEY)
    assert fingerprint([1, 2], KEY) != fingerprint([2, 1], KEY)
    assert fingerprint([[1], [2]], KEY) != fingerprint([[1, 2]], KEY)
    # numbers written as strings, and -0.0, are the same model input (no free re-rolls)
    assert fingerprint(["1", "-0.0"], KEY) == fingerprint([1, 0], KEY)
    assert fingerprint(["a"], KEY) != fingerprint(["b"], KEY)
    assert fingerprint([True, "x"], KEY) != fingerprint([1, "x"], KEY)
    assert fingerprint([1], KEY) != fingerprint([1], b"other" * 8)


@given(json_values)
def test_fingerprint_survives_a_json_round_trip(value):
    assert fingerprint(value, KEY) == fingerprint(json.loads(json.dumps(value)), KEY)


def test_read_predictions_understands_common_shapes():
    probs = [0.1, 0.7, 0.2]
    assert read_predictions({"label": 1, "probabilities": probs}) == [(1, 0.7)]
    assert read_predictions({"probabilities": probs}) == [(1, 0.7)]
    assert read_predictions({"predictions": [{"label": "x", "probabilities": probs}, {"label": 2}]}) == [
        ("x", 0.7), (2, None)]
    assert read_predictions({"scores": {"cat": 0.2, "dog": 0.8}}) == [("dog", 0.8)]
    assert read_predictions([probs, [0.9, 0.1, 0.0]]) == [(1, 0.7), (0, 0.9)]
    assert read_predictions(probs) == [(1, 0.7)]
    assert read_predictions({"something": "else"}) == []
    assert read_predictions("text") == []


def test_instances():
    assert instances({"instances": [[1], [2], [3]]}) == [[1], [2], [3]]
    assert instances({"inputs": []}) == []
    assert instances({"features": [1, 2]}) == [[1, 2]]
    assert instances(None) == [None]


def test_event_row_reads_raw_json_response_bytes():
    event = QueryEvent(1, 2, "r", 10.0, 200, 1.5, 1, {"features": [1]}, b'{"label": 4, "probabilities": [0.5, 0.5]}')
    row = event.to_row(KEY)
    assert row["labels"] == [4] and row["top_confidences"] == [0.5]
    assert row["fingerprint"] == fingerprint({"features": [1]}, KEY) and row["input"] is None
    assert QueryEvent(1, 2, "r", 10.0, 200, 1.5, 1, None, b"not json").to_row(KEY, True)["labels"] is None
