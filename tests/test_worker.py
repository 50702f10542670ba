"""The event worker: batching, bounded queue, retries, fork safety, exit flush."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from flask_modelguard.worker import EventWorker

from .conftest import sql


def make(write, **kwargs) -> EventWorker:
    kwargs.setdefault("flush_interval", 60.0)  # the thread only drains when told to
    return EventWorker(lambda item: {"n": item}, write, **kwargs)


def test_flush_writes_everything_in_batches():
    batches = []
    worker = make(lambda rows: batches.append([r["n"] for r in rows]), batch_size=4)
    for i in range(10):
        assert worker.submit(i)
    assert worker.flush(timeout=2)
    assert [n for batch in batches for n in batch] == list(range(10))
    assert max(len(batch) for batch in batches) == 4
    assert worker.stats() | {"alive": True} == {
        "alive": True, "queue_depth": 0, "dropped": 0, "spilled": 0, "written": 10, "write_failures": 0,
    }
    worker.stop()


def test_thread_drains_on_its_own():
    done = threading.Event()
    worker = make(lambda rows: done.set(), flush_interval=0.05)
    worker.submit(1)
    assert done.wait(2)
    assert worker.alive
    worker.stop()


def test_full_queue_drops_and_counts():
    release = threading.Event()
    worker = make(lambda rows: release.wait(5), max_queue=3, batch_size=1)
    results = [worker.submit(i) for i in range(10)]  # the thread is stuck writing
    assert results.count(True) == 3 and results[-7:] == [False] * 7
    assert worker.dropped == 7 and worker.depth == 3
    release.set()
    assert worker.flush(timeout=2) and worker.written == 3
    worker.stop()


def test_failed_writes_are_retried_with_backoff():
    calls = {"n": 0}
    written = []

    def flaky(rows):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("database away")
        written.extend(r["n"] for r in rows)

    worker = make(flaky)
    for i in range(5):
        worker.submit(i)
    assert worker.flush(timeout=5)
    assert written == [0, 1, 2, 3, 4]
    assert worker.failures == 2 and worker.dropped == 0
    worker.stop()


def test_bad_item_is_dropped_not_fatal():
    written = []
    worker = EventWorker(lambda item: {"n": 1 / item}, lambda rows: written.extend(rows), flush_interval=60)
    for item in (1, 0, 2):
        worker.submit(item)
    assert worker.flush(timeout=2)
    assert [r["n"] for r in written] == [1.0, 0.5] and worker.dropped == 1
    worker.stop()


def test_flush_gives_up_after_timeout_and_keeps_rows():
    worker = make(lambda rows: (_ for _ in ()).throw(ConnectionError("down")), shutdown_timeout=0.1)
    worker.submit(1)
    assert worker.flush(timeout=0.3) is False
    assert worker.depth == 1  # still held for the next attempt
    worker.write = lambda rows: None  # the database is back
    assert worker.flush(timeout=2) and worker.written == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_starts_its_own_thread_and_queue(tmp_path):
    out = tmp_path / "rows.txt"

    def write(rows):
        with open(out, "a") as fh:
            for r in rows:
                fh.write(f"{os.getpid()} {r['n']}\n")

    worker = make(write)
    worker.submit("parent-before-fork")
    pid = os.fork()
    if pid == 0:  # child
        try:
            worker.submit("child")
            worker.flush(timeout=2)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    worker.flush(timeout=2)
    lines = out.read_text().split("\n")[:-1]
    assert sorted(line.split()[1] for line in lines) == ["child", "parent-before-fork"]
    assert f"{os.getpid()} parent-before-fork" in lines
    worker.stop()


def test_events_queued_at_exit_are_flushed(tmp_path):
    """A server process that exits without calling flush() loses nothing."""
    db = tmp_path / "exit.db"
    script = textwrap.dedent(f"""
        from flask_modelguard import ModelGuard
        from tests.conftest import model_app
        guard = ModelGuard()
        app = model_app(guard, MODELGUARD_DATABASE_URL="sqlite:///{db}", MODELGUARD_FLUSH_INTERVAL=3600)
        with app.app_context():
            guard.create_account("a", limits="1000/minute")
            key = guard.issue_key("a")
        client = app.test_client()
        for i in range(40):
            assert client.post("/predict", json={{"features": [i]}}, headers={{"X-API-Key": key}}).status_code == 200
        assert guard.stats(app)["written"] == 0
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", script], check=True, cwd=root, timeout=60)
    assert sql(f"sqlite:///{db}", "select count(*) from modelguard_query_events")[0][0] == 40


def test_worker_keeps_up_with_a_busy_request_thread(tmp_path):
    """A request thread that never waits (the test client, no network) starves
    a background thread of the GIL; the worker must still keep up, not drop."""
    from flask_modelguard import ModelGuard

    from .conftest import model_app

    guard = ModelGuard()
    app = model_app(
        guard,
        MODELGUARD_DATABASE_URL=f"sqlite:///{tmp_path}/busy.db",
        MODELGUARD_QUEUE_SIZE=1000,
        MODELGUARD_BATCH_SIZE=100,
        MODELGUARD_FLUSH_INTERVAL=0.05,
    )
    with app.app_context():
        guard.create_account("busy", limits="100000/minute")
        key = guard.issue_key("busy")
    client = app.test_client()
    body = {"features": list(range(64))}
    for _ in range(4000):
        client.post("/predict", json=body, headers={"X-API-Key": key})
    stats = guard.stats(app)
    assert stats["dropped"] == 0, stats
    assert stats["written"] >= 4000 - 1000, stats
    guard.close(app)


def test_rows_refused_for_good_are_isolated_and_dropped():
    written = []

    def write(rows):
        if any(r["n"] == "bad" for r in rows):
            raise ValueError("bad row")
        written.extend(r["n"] for r in rows)

    worker = make(write, permanent=lambda exc: isinstance(exc, ValueError), batch_size=8)
    for item in [1, 2, "bad", 3, 4, 5, "bad", 6]:
        worker.submit(item)
    assert worker.flush(timeout=2)
    assert sorted(written) == [1, 2, 3, 4, 5, 6]
    assert worker.dropped == 2 and worker.written == 6 and worker.failures == 0
    worker.stop()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_flush_in_a_forked_child_does_not_rewrite_the_parents_events(tmp_path):
    out = tmp_path / "rows.txt"

    def write(rows):
        with open(out, "a") as fh:
            fh.writelines(f"{r['n']}\n" for r in rows)

    worker = make(write)
    worker.submit("parent")
    pid = os.fork()
    if pid == 0:
        try:
            worker.flush(timeout=2)  # e.g. a gunicorn worker_exit hook, before any request
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    worker.flush(timeout=2)
    assert out.read_text().split() == ["parent"]
    worker.stop()


def test_a_probe_cuts_a_long_backoff_short():
    """Storage away long enough for the backoff to reach its cap (5 s): once
    the probe says it is back, the rows are written within about a second."""
    state = {"up": False}
    written = []

    def write(rows):
        if not state["up"]:
            raise ConnectionError("database away")
        written.extend(rows)

    worker = make(write, flush_interval=0.05, probe=lambda: state["up"])
    worker.submit(1)
    deadline = time.monotonic() + 15.0
    while worker._backoff < 3.2:  # backoffs 0.1, 0.2, 0.4, 0.8, 1.6 (3.1 s), then 3.2
        assert time.monotonic() < deadline, (worker.failures, worker._backoff)
        time.sleep(0.05)
    assert worker.failures >= 5 and not written
    state["up"] = True
    began = time.monotonic()
    while not written:
        assert time.monotonic() - began < 2.0, "the probe did not cut the backoff short"
        time.sleep(0.02)
    worker.stop()


def test_queue_is_bounded_in_bytes_too():
    worker = make(lambda rows: None, max_bytes=100)
    assert worker.submit(1, size=60)
    assert not worker.submit(2, size=60) and worker.dropped == 1
    assert worker.submit(3, size=40)  # 100 bytes in all: still within the bound
    assert worker.flush(timeout=2)
    assert worker.submit(4, size=90)  # written items no longer count
    worker.stop()


@pytest.mark.parametrize("spill", [True, False])
def test_what_a_final_flush_cannot_write_is_spilled_or_counted(spill, caplog):
    spilled: list[list[dict]] = []
    worker = make(lambda rows: (_ for _ in ()).throw(ConnectionError("down")), shutdown_timeout=0.2,
                  spill=spilled.append if spill else None)
    for i in range(7):
        worker.submit(i)
    caplog.set_level("ERROR", logger="flask_modelguard")
    assert worker.stop() is False
    assert worker.depth == 0
    if spill:
        assert [r["n"] for r in spilled[0]] == list(range(7)) and worker.spilled == 7 and worker.dropped == 0
        assert "7 events spilled" in caplog.text
    else:
        assert worker.dropped == 7 and "7 events lost (counted in dropped)" in caplog.text
    assert len([r for r in caplog.records if "shutdown" in r.getMessage()]) == 1  # one line, not one per hook
