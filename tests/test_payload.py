"""Example tests of JSON payload adapters (flask_modelguard.payload)."""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest

from flask_modelguard.payload import (
    AutoAdapter,
    CallableAdapter,
    PathAdapter,
    Prediction,
    Reading,
    instances,
    make_adapter,
    read_predictions,
)
from flask_modelguard.transforms import (
    Answer,
    KeyedRandom,
    LabelOnly,
    Round,
    TopK,
    Transform,
    Watermark,
    apply,
)


def rng(n: int) -> KeyedRandom:
    return KeyedRandom.for_inputs(b"payload-test-key", 1, [f"fp{i}" for i in range(n)])


def served(reading: Reading, *transforms: Transform) -> Any:
    """The payload written back after ``transforms``; checked to be JSON."""
    out = reading.write(apply(transforms, reading.answer, rng(len(reading.answer.labels))))
    json.loads(json.dumps(out))
    return out


def read(payload: Any) -> Reading:
    snapshot = copy.deepcopy(payload)
    reading = AutoAdapter().read(payload)
    assert reading is not None
    assert payload == snapshot  # reading does not modify the payload
    return reading


def swap_labels(answer: Answer, labels: list[int]) -> Answer:
    """An answer serving ``labels`` (as a watermark would)."""
    return Answer(answer.probs, np.asarray(labels), answer.keep, answer.label_only, answer.watermarked)


# --------------------------------------------------------------------------- AutoAdapter: reading


def test_label_and_probabilities() -> None:
    payload = {"label": 1, "probabilities": [0.2, 0.7, 0.1], "model": "v3"}
    r = read(payload)
    assert r.answer.probs.tolist() == [[0.2, 0.7, 0.1]]
    assert r.answer.labels.tolist() == [1]
    assert r.classes is None
    assert r.label_value(2) == 2


def test_probabilities_only() -> None:
    r = read({"probabilities": [0.6, 0.4]})
    assert r.answer.probs.shape == (1, 2)
    assert r.answer.labels.tolist() == [0]


def test_predictions_list() -> None:
    payload = {
        "predictions": [
            {"label": 0, "probabilities": [0.9, 0.1]},
            {"label": 1, "probabilities": [0.3, 0.7]},
            {"label": 1, "probabilities": [0.45, 0.55]},
        ],
        "model_version": 2,
    }
    r = read(payload)
    assert r.answer.probs.shape == (3, 2)
    assert r.answer.labels.tolist() == [0, 1, 1]


def test_scores() -> None:
    r = read({"scores": {"cat": 0.2, "dog": 0.5, "bird": 0.3}})
    assert r.classes == ["cat", "dog", "bird"]
    assert r.answer.probs.tolist() == [[0.2, 0.5, 0.3]]
    assert r.label_value(int(r.answer.labels[0])) == "dog"


def test_scores_per_prediction() -> None:
    payload = {"predictions": [{"scores": {"a": 0.1, "b": 0.9}}, {"scores": {"a": 0.8, "b": 0.2}}]}
    r = read(payload)
    assert r.classes == ["a", "b"]
    assert r.answer.labels.tolist() == [1, 0]


def test_top_level_list_of_vectors_and_of_dicts() -> None:
    r = read([[0.1, 0.9], [0.6, 0.4], [0.5, 0.5]])
    assert r.answer.probs.shape == (3, 2)
    assert r.answer.labels.tolist() == [1, 0, 0]
    r = read([{"probabilities": [0.1, 0.9], "id": "a"}, {"probabilities": [0.7, 0.3], "id": "b"}])
    assert r.answer.labels.tolist() == [1, 0]


def test_top_level_vector_with_ints() -> None:
    r = read([0, 1, 0])
    assert r.answer.probs.dtype == np.float64
    assert r.answer.probs.tolist() == [[0.0, 1.0, 0.0]]
    assert r.answer.labels.tolist() == [1]


# --------------------------------------------------------------------------- AutoAdapter: writing back


def test_write_label_and_probabilities_keeps_other_keys() -> None:
    payload = {"label": 1, "probabilities": [0.234, 0.666, 0.1], "model": "v3"}
    r = read(payload)
    out = served(r, Round(1))
    assert out == {"label": 1, "probabilities": [0.2, 0.7, 0.1], "model": "v3"}
    assert payload["probabilities"] == [0.234, 0.666, 0.1]  # the original is left alone


def test_write_updates_label() -> None:
    r = read({"label": 1, "probabilities": [0.2, 0.7, 0.1], "model": "v3"})
    out = r.write(swap_labels(r.answer, [2]))
    assert out["label"] == 2
    assert out["model"] == "v3"


def test_write_without_label_key_does_not_add_one() -> None:
    r = read({"probabilities": [0.6, 0.4]})
    assert served(r, Round(0)) == {"probabilities": [1.0, 0.0]}


def test_write_label_only_drops_probabilities() -> None:
    r = read({"label": 1, "probabilities": [0.2, 0.7, 0.1], "model": "v3"})
    assert served(r, LabelOnly()) == {"label": 1}  # other keys may carry scores: dropped
    r = read({"probabilities": [0.2, 0.1, 0.7]})
    assert served(r, LabelOnly()) == {"label": 2}


def test_write_top_k_drop_on_dict_adds_classes() -> None:
    r = read({"probabilities": [0.2, 0.5, 0.3], "id": 9})
    out = served(r, TopK(2, mode="drop"))
    assert out == {"probabilities": [0.5, 0.3], "classes": [1, 2], "id": 9}
    out = served(r, TopK(2))  # mode zero: all entries, zeros included
    assert out == {"probabilities": [0.0, 0.5, 0.3], "id": 9}


def test_write_predictions_keeps_wrapper_and_items() -> None:
    payload = {
        "predictions": [
            {"label": 0, "probabilities": [0.91, 0.09], "id": "a"},
            {"label": 1, "probabilities": [0.33, 0.67], "id": "b"},
        ],
        "model_version": 2,
    }
    r = read(payload)
    out = served(r, Round(1))
    assert out == {
        "predictions": [
            {"label": 0, "probabilities": [0.9, 0.1], "id": "a"},
            {"label": 1, "probabilities": [0.3, 0.7], "id": "b"},
        ],
        "model_version": 2,
    }
    out = r.write(swap_labels(r.answer, [1, 0]))
    assert [p["label"] for p in out["predictions"]] == [1, 0]
    out = served(r, LabelOnly())
    assert out["predictions"] == [{"label": 0}, {"label": 1}]
    assert out["model_version"] == 2


def test_write_scores_uses_class_names() -> None:
    payload = {"label": "dog", "scores": {"cat": 0.2, "dog": 0.5, "bird": 0.3}, "took_ms": 3}
    r = read(payload)
    out = served(r, Round(0))
    assert out == {"label": "dog", "scores": {"cat": 0.0, "dog": 0.0, "bird": 0.0}, "took_ms": 3}
    out = r.write(swap_labels(r.answer, [2]))
    assert out["label"] == "bird"
    assert out["scores"] == {"cat": 0.2, "dog": 0.5, "bird": 0.3}


def test_write_scores_top_k_drop_removes_keys() -> None:
    r = read({"scores": {"cat": 0.2, "dog": 0.5, "bird": 0.3}})
    out = served(r, TopK(2, mode="drop"))
    assert out == {"scores": {"dog": 0.5, "bird": 0.3}}
    assert "classes" not in out


def test_write_scores_label_only() -> None:
    r = read({"scores": {"cat": 0.2, "dog": 0.5, "bird": 0.3}, "took_ms": 3})
    assert served(r, LabelOnly()) == {"label": "dog"}


def test_write_list_of_vectors() -> None:
    r = read([[0.12, 0.88], [0.61, 0.39]])
    assert served(r, Round(1)) == [[0.1, 0.9], [0.6, 0.4]]
    assert served(r, LabelOnly()) == [{"label": 1}, {"label": 0}]
    assert served(r, TopK(1, mode="drop")) == [
        {"probabilities": [0.88], "classes": [1]},
        {"probabilities": [0.61], "classes": [0]},
    ]
    assert served(r, TopK(1)) == [[0.0, 0.88], [0.61, 0.0]]


def test_write_list_of_dicts() -> None:
    r = read([{"probabilities": [0.12, 0.88], "id": "a"}, {"probabilities": [0.61, 0.39], "id": "b"}])
    assert served(r, LabelOnly()) == [{"label": 1}, {"label": 0}]
    assert served(r, Round(1)) == [{"probabilities": [0.1, 0.9], "id": "a"}, {"probabilities": [0.6, 0.4], "id": "b"}]


def test_write_top_level_vector() -> None:
    r = read([0.123, 0.456, 0.421])
    assert served(r, Round(2)) == [0.12, 0.46, 0.42]
    assert served(r, LabelOnly()) == {"label": 1}
    assert served(r, TopK(2, mode="drop")) == {"probabilities": [0.456, 0.421], "classes": [1, 2]}


def test_write_watermark_is_json() -> None:
    payload = {"predictions": [{"label": i % 3, "probabilities": [0.5, 0.3, 0.2]} for i in range(8)]}
    r = read(payload)
    out = served(r, Watermark(1.0))
    labels = [p["label"] for p in out["predictions"]]
    assert all(isinstance(x, int) and x != 0 for x in labels)
    for p in out["predictions"]:
        assert p["probabilities"][p["label"]] == 0.5


def test_reading_other_mapping_types() -> None:
    payload = OrderedDict([("label", 0), ("probabilities", [0.8, 0.2])])
    r = AutoAdapter().read(payload)
    assert r is not None
    assert served(r, LabelOnly()) == {"label": 0}


# --------------------------------------------------------------------------- AutoAdapter: unrecognised


@pytest.mark.parametrize(
    "payload",
    [
        "a string", "", b"bytes", 3, 2.5, True, None, {}, [], [[]], {"foo": 1}, {"foo": [0.1, 0.9]},
        {"probabilities": []}, {"probabilities": "0.1,0.9"}, {"probabilities": [0.1, "x"]},
        {"probabilities": [[0.1, 0.9]]}, {"probabilities": {"a": 1}},
        {"scores": {}}, {"scores": {"a": "high"}}, {"scores": {"a": True, "b": False}}, {"scores": [0.1, 0.9]},
        {"predictions": []}, {"predictions": [1, 2]}, {"predictions": [{"label": 1}]},
        {"predictions": [{"probabilities": [0.1, 0.9]}, {"probabilities": [0.1, 0.2, 0.7]}]},
        {"predictions": [{"scores": {"a": 0.1, "b": 0.9}}, {"scores": {"b": 0.1, "c": 0.9}}]},
        {"predictions": [{"scores": {"a": 0.1, "b": 0.9}}, {"probabilities": [0.1, 0.9]}]},
        [[0.1, 0.9], [1.0]], [[0.1, 0.9], "x"], [[[0.1, 0.9]]], [{"a": 1}], [None], [0.1, "x"],
        [0.1, None], [0.1, [0.9]], [True, 0.5], ["0.1", "0.9"], [10**400, 1], {"label": 3},
        (0.1, 0.9), {"probabilities": (0.1, 0.9)}, float("nan"),
    ],
    ids=repr,
)
def test_unrecognised_payloads(payload: Any) -> None:
    assert AutoAdapter().read(payload) is None


def test_unrecognised_deeply_nested_does_not_raise() -> None:
    deep: Any = [0.5]
    for _ in range(200):
        deep = [deep]
    assert AutoAdapter().read(deep) is None
    assert AutoAdapter().read({"predictions": [deep]}) is None


def test_mixed_list_does_not_leak_raw_probabilities() -> None:
    payload = [[0.12, 0.88], {"probabilities": [0.33, 0.67]}]
    r = AutoAdapter().read(payload)
    if r is None:  # refusing the shape is fine too
        return
    out = served(r, LabelOnly())
    assert out[1] == {"label": 1}


# --------------------------------------------------------------------------- PathAdapter


def test_path_adapter_single_vector() -> None:
    payload = {"result": {"probs": [0.234, 0.766], "name": "x"}, "meta": 1}
    snapshot = copy.deepcopy(payload)
    r = PathAdapter("result.probs").read(payload)
    assert r is not None and r.classes is None
    assert r.answer.probs.tolist() == [[0.234, 0.766]]
    out = served(r, Round(1))
    assert out == {"result": {"probs": [0.2, 0.8], "name": "x"}, "meta": 1}
    assert payload == snapshot  # containers on the path were copied
    assert served(r, LabelOnly()) == {"result": {"probs": {"label": 1}, "name": "x"}, "meta": 1}
    assert served(r, TopK(1, mode="drop"))["result"]["probs"] == {"probabilities": [0.766], "classes": [1]}


def test_path_adapter_batch_and_list_index() -> None:
    payload = {"result": {"probs": [[0.11, 0.89], [0.72, 0.28]]}}
    r = PathAdapter("result.probs").read(payload)
    assert r is not None
    assert r.answer.labels.tolist() == [1, 0]
    assert served(r, Round(1)) == {"result": {"probs": [[0.1, 0.9], [0.7, 0.3]]}}
    assert served(r, LabelOnly()) == {"result": {"probs": [{"label": 1}, {"label": 0}]}}
    listed = {"outputs": [{"p": [0.3, 0.7]}, {"p": [0.9, 0.1]}]}
    r = PathAdapter("outputs.1.p").read(listed)
    assert r is not None and r.answer.labels.tolist() == [0]
    out = served(r, LabelOnly())
    assert out == {"outputs": [{"p": [0.3, 0.7]}, {"p": {"label": 0}}]}
    assert listed == {"outputs": [{"p": [0.3, 0.7]}, {"p": [0.9, 0.1]}]}


@pytest.mark.parametrize(
    "payload",
    [
        {}, {"result": {}}, {"result": {"other": [0.1, 0.9]}}, {"result": [0.1, 0.9]}, {"result": "text"},
        {"result": {"probs": []}}, {"result": {"probs": "0.1"}}, {"result": {"probs": 0.5}},
        {"result": {"probs": [[0.1, 0.9], [1.0]]}}, {"result": {"probs": [[0.1, 0.9], "x"]}},
        {"result": {"probs": [[]]}}, {"result": {"probs": {"a": 0.5}}}, [0.1, 0.9], "result", None, 7,
    ],
    ids=repr,
)
def test_path_adapter_missing_or_unusable(payload: Any) -> None:
    assert PathAdapter("result.probs").read(payload) is None


def test_path_adapter_index_out_of_range() -> None:
    assert PathAdapter("outputs.5").read({"outputs": [[0.1, 0.9]]}) is None


# --------------------------------------------------------------------------- CallableAdapter and make_adapter


def test_callable_adapter() -> None:
    calls: list[Any] = []

    def reader(payload: Any) -> Any:
        return payload.get("out")

    def writer(payload: Any, answer: Answer) -> Any:
        calls.append((payload, answer))
        return {"out": answer.probs.tolist(), "labels": answer.labels.tolist()}

    adapter = CallableAdapter(reader, writer)
    assert adapter.read({"nothing": 1}) is None
    payload = {"out": [[0.12, 0.88], [0.7, 0.3]]}
    r = adapter.read(payload)
    assert r is not None and r.classes is None
    assert r.answer.labels.tolist() == [1, 0]
    assert served(r, Round(1)) == {"out": [[0.1, 0.9], [0.7, 0.3]], "labels": [1, 0]}
    assert calls[0][0] is payload
    single = adapter.read({"out": [0.4, 0.6]})
    assert single is not None and single.answer.probs.shape == (1, 2)


def test_make_adapter() -> None:
    assert isinstance(make_adapter(None), AutoAdapter)
    path = make_adapter("a.b")
    assert isinstance(path, PathAdapter)
    assert path.read({"a": {"b": [0.1, 0.9]}}).answer.labels.tolist() == [1]
    pair = make_adapter((lambda p: p, lambda p, a: a.labels.tolist()))
    assert isinstance(pair, CallableAdapter)
    assert pair.read([[0.2, 0.8]]).write(Answer.of([[0.2, 0.8]])) == [1]
    custom = AutoAdapter()
    assert make_adapter(custom) is custom

    class Custom:
        def read(self, payload: Any) -> None:
            return None

    obj = Custom()
    assert make_adapter(obj) is obj


@pytest.mark.parametrize("junk", [5, 2.0, [], {}, ("a", "b"), (len,), (len, len, len), [len, len], object()])
def test_make_adapter_rejects_junk(junk: Any) -> None:
    with pytest.raises(TypeError):
        make_adapter(junk)


# --------------------------------------------------------------------------- read_predictions


def test_read_predictions_shapes() -> None:
    assert read_predictions({"label": 2, "probabilities": [0.1, 0.2, 0.7]}) == [Prediction(2, 0.7)]
    assert read_predictions({"probabilities": [0.1, 0.6, 0.3]}) == [Prediction(1, 0.6)]
    assert read_predictions({"scores": {"cat": 0.3, "dog": 0.7}}) == [Prediction("dog", 0.7)]
    assert read_predictions([0.3, 0.7]) == [Prediction(1, 0.7)]
    assert read_predictions([[0.3, 0.7], [0.9, 0.1]]) == [Prediction(1, 0.7), Prediction(0, 0.9)]
    assert read_predictions({"label": "cat"}) == [Prediction("cat", None)]
    assert read_predictions({"predictions": [{"label": 1}, {"label": "x"}]}) == [
        Prediction(1, None), Prediction("x", None)]
    # the served label wins over the argmax (e.g. a watermark answer)
    assert read_predictions({"label": 0, "probabilities": [0.2, 0.8]}) == [Prediction(0, 0.8)]
    assert isinstance(read_predictions([1, 0])[0].confidence, float)


def test_read_predictions_skips_what_it_cannot_read() -> None:
    for payload in (None, "text", 3, [], {}, {"foo": 1}, {"label": True}, {"label": 1.5}, {"label": None},
                    {"label": [1, 2]}, {"predictions": []}):
        assert read_predictions(payload) == []
    mixed = {"predictions": [{"label": 1}, "junk", {"label": False}, {"probabilities": [0.4, 0.6]}, None]}
    assert read_predictions(mixed) == [Prediction(1, None), Prediction(1, 0.6)]


def test_read_predictions_of_written_payloads() -> None:
    # what the query log reads is what protection wrote: the served labels
    r = read({"predictions": [{"label": 0, "probabilities": [0.6, 0.4]}, {"probabilities": [0.2, 0.8]}]})
    out = served(r, Watermark(1.0))  # every answer deliberately wrong
    assert [p.label for p in read_predictions(out)] == [1, 0]
    assert [p.confidence for p in read_predictions(out)] == [0.6, 0.8]
    assert [p.label for p in read_predictions(served(r, LabelOnly()))] == [0, 1]
    r = read({"scores": {"cat": 0.2, "dog": 0.5, "bird": 0.3}})
    assert read_predictions(served(r, TopK(2, mode="drop"))) == [Prediction("dog", 0.5)]
    assert read_predictions(served(r, LabelOnly())) == [Prediction("dog", None)]


def test_read_predictions_of_label_only_bare_vectors() -> None:
    r = read([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    assert [p.label for p in read_predictions(served(r, LabelOnly()))] == [2, 0]


def test_read_predictions_of_label_only_single_vector() -> None:
    r = read([0.1, 0.2, 0.7])
    assert [p.label for p in read_predictions(served(r, LabelOnly()))] == [2]


@pytest.mark.parametrize("payload", [[[0.1, 0.2, 0.7]], {"predictions": [{"probabilities": [0.1, 0.2, 0.7]}]}],
                         ids=["bare", "dict"])
def test_read_predictions_of_top_k_drop(payload: Any) -> None:
    r = read(payload)
    assert read_predictions(served(r, TopK(1, mode="drop"))) == [Prediction(2, 0.7)]


# --------------------------------------------------------------------------- instances


def test_instances() -> None:
    assert instances({"instances": [[1, 2], [3, 4]]}) == [[1, 2], [3, 4]]
    assert instances({"inputs": [1, 2, 3]}) == [1, 2, 3]
    body = {"instances": [], "inputs": [1]}
    assert instances(body) == [body]  # ambiguous: the whole body is the input
    body = {"instances": "not a list", "inputs": [1]}
    assert instances(body) == [body]
    assert instances({"instances": "not a list"}) == [{"instances": "not a list"}]
    body = {"instances": {"a": 1}, "features": [1, 2]}
    assert instances(body) == [body]
    assert instances({"features": [0.5, 0.1]}) == [[0.5, 0.1]]
    assert instances({"features": None}) == [None]
    assert instances({"x": 1}) == [{"x": 1}]
    assert instances({}) == [{}]
    assert instances([1, 2]) == [[1, 2]]
    assert instances("text") == ["text"]
    assert instances(None) == [None]
