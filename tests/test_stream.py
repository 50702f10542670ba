"""The Redis stream of query events: what serving processes publish is what
`flask modelguard worker` judges, acknowledged after it is written."""

from __future__ import annotations

import threading
import uuid

from flask_modelguard.consumer import StreamConsumer
from flask_modelguard.events import QueryEvent
from flask_modelguard.stream import EventStream, decode, encode


def _event(n: int) -> QueryEvent:
    return QueryEvent(7, 3, "predict", 1000.0 + n, 200, 1.5, 1, {"instances": [[n, 0.5]]},
                      b'{"predictions": [{"label": 1}]}', [], False, {"predictions": [{"label": 2}]},
                      fingerprints=["ab" * 16], raw_body=b'{"instances": [[%d, 0.5]]}' % n)


def test_an_entry_decodes_to_the_event_it_encodes() -> None:
    event = _event(4)
    back = decode(encode(event), {"predict": "adapter"})
    assert (back.account_id, back.key_id, back.route, back.ts, back.status) == (7, 3, "predict", 1004.0, 200)
    assert back.request_json == {"instances": [[4, 0.5]]}
    assert back.model_json == {"predictions": [{"label": 2}]}
    assert back.fingerprints == ["ab" * 16] and back.adapter == "adapter"
    assert back.client is None
    event.client = "203.0.113.7"
    assert decode(encode(event), {}).client == "203.0.113.7"


def test_consumer_writes_every_published_event_once_and_acknowledges_it(redis_uri: str) -> None:
    stream = EventStream(redis_uri, f"test-{uuid.uuid4().hex}:events", max_backlog=1000)
    try:
        stream.publish([encode(_event(n)) for n in range(25)])
        assert stream.backlog == 25
        written: list[dict] = []
        consumer = StreamConsumer(stream, lambda e: {"ts": e.ts}, written.extend, {}, consumer="c1",
                                  batch_size=10, flush_interval=0.05)
        assert consumer.run(threading.Event(), limit=25) == 25
        assert sorted(r["ts"] for r in written) == [1000.0 + n for n in range(25)]
        assert stream.client.xlen(stream.name) == 0  # acknowledged and deleted
    finally:
        stream.client.delete(stream.name)


def test_a_full_backlog_refuses_and_counts(redis_uri: str) -> None:
    stream = EventStream(redis_uri, f"test-{uuid.uuid4().hex}:events", max_backlog=5)
    try:
        assert stream.publish([encode(_event(n)) for n in range(5)]) == 0
        assert stream.publish([encode(_event(n)) for n in range(3)]) == 3
        assert (stream.published, stream.refused, stream.client.xlen(stream.name)) == (5, 3, 5)
    finally:
        stream.client.delete(stream.name)
