"""lifecycle.py: every at-fork and at-exit hook in one place, held weakly, run in
order; engines, workers, webhooks and guard states reset in a forked child."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from flask_modelguard import lifecycle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


class _Recorder:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def hook(self) -> None:
        self.log.append(self.name)


def test_hooks_run_in_order_or_in_reverse_and_dead_or_failing_ones_do_not_stop_the_rest() -> None:
    calls: list[str] = []
    hooks = lifecycle.Hooks()
    first, second, gone = _Recorder(calls, "first"), _Recorder(calls, "second"), _Recorder(calls, "gone")
    for recorder in (first, gone, second):
        hooks.add(recorder.hook)
    del gone
    gc.collect()
    hooks.run()
    assert calls == ["first", "second"]
    calls.clear()
    hooks.run(reverse=True)
    assert calls == ["second", "first"] and len(hooks.live()) == 2


def test_a_failing_hook_is_logged_and_the_next_runs(caplog: Any) -> None:
    calls: list[str] = []

    class Failing:
        def hook(self) -> None:
            raise RuntimeError("boom")

    hooks, failing, after = lifecycle.Hooks(), Failing(), _Recorder(calls, "after")
    hooks.add(failing.hook)
    hooks.add(after.hook)
    hooks.run()
    assert calls == ["after"] and "lifecycle hook failed" in caplog.text


#: Forks happen in a fresh interpreter: forking the test process, with every
#: earlier test's threads alive in it, could inherit a lock one of them held.
_CHILD = """
import os
def in_child(check):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if check() else 3
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
"""


def _fresh(body: str) -> None:
    """Run ``body`` (with ``in_child`` defined) in a new interpreter; it must succeed."""
    done = subprocess.run([sys.executable, "-c", _CHILD + textwrap.dedent(body)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_fork
def test_a_forked_child_does_not_deliver_its_parents_alerts() -> None:
    _fresh("""
        from flask_modelguard.alerts import Webhook
        hook = Webhook("http://127.0.0.1:9/never", retries=0)
        with hook._wake:  # held by a parent thread at the moment of the fork
            hook._queue.append({"event": "parent's"})
            status = in_child(lambda: not hook._queue and hook._thread is None and hook._wake.acquire(timeout=1))
        assert status == 0, status
        assert list(hook._queue) == [{"event": "parent's"}]
    """)


@needs_fork
def test_a_forked_child_starts_with_an_empty_worker_queue_and_fresh_locks() -> None:
    _fresh("""
        from flask_modelguard.worker import EventWorker
        worker = EventWorker(lambda item: {"n": item}, lambda rows: None, flush_interval=60.0)
        worker.submit("parent's", size=10)
        with worker._counts:  # a request thread of the parent counting at the moment of the fork
            status = in_child(lambda: worker.depth == 0 and worker._bytes == 0 and worker._counts.acquire(timeout=1))
        assert status == 0, status
        worker.stop()
    """)


@needs_fork
def test_a_forked_child_forgets_inherited_database_connections(tmp_path: Any) -> None:
    _fresh(f"""
        import os
        from flask_modelguard import lifecycle
        engine = lifecycle.make_engine("sqlite:///{tmp_path}/sub/guard.db", {{}})
        with engine.connect() as conn:
            conn.exec_driver_sql("select 1")
        assert engine.pool.checkedin() == 1
        assert os.path.isdir("{tmp_path}/sub")  # the file's folder is made
        assert in_child(lambda: engine.pool.checkedin() == 0) == 0
        assert engine.pool.checkedin() == 1  # the parent's connection is not closed by the child
        engine.dispose()
    """)
