"""The example app as ``make run`` serves it, driven over real HTTP.

:class:`ServedExample` starts ``python -m example_app`` in a subprocess with a
fresh instance folder (``EXAMPLE_INSTANCE_PATH``; it holds the guard's SQLite
file, the secret and the cached model), on a loopback port taken for it beforehand, with the
app's defaults otherwise (inherited ``MODELGUARD_*``, ``SECRET_KEY``,
``MODEL_CACHE_DIR`` and ``FLASK_*`` variables are removed). Nothing is set up
on the server beyond what an operator does with the CLI: creating accounts.

:func:`drive` sends simulated actors' requests over HTTP in real time
(their simulated delays are ignored), a few requests in flight, each actor
one request at a time (thieves adapt to their answers).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flask_modelguard.simulate import Actor, HTTPTransport, World, read_answer

ROOT = Path(__file__).resolve().parent.parent
#: Environment variables that would replace the example's defaults.
_OVERRIDES = ("MODELGUARD_", "FLASK_", "WERKZEUG_")
_OVERRIDE_NAMES = ("SECRET_KEY", "MODEL_CACHE_DIR", "EXAMPLE_INSTANCE_PATH", "PORT", "HOST")
_KEY = re.compile(r"^API key: (mg_\S+)$", re.MULTILINE)


def listening_socket() -> socket.socket:
    """A loopback socket on a port the kernel chose, listening: the server's.
    Taken before the server starts (its first start trains and calibrates for
    half a minute or more before it would bind a port it was told): no other
    process, such as another test run at the same time, can take the port meanwhile."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def _environment(instance: Path, port: int | None = None, fd: int | None = None,
                 extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_OVERRIDES) and k not in _OVERRIDE_NAMES}
    env.update(extra or {})
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env["EXAMPLE_INSTANCE_PATH"] = str(instance)
    # One BLAS/OpenMP thread unless the caller chose: on this 2-core machine, busy
    # with other processes, OpenBLAS's default threads made the example's first
    # start (training its MLP on a fresh instance folder) take 85 s instead of 10 s.
    # A runtime knob of numpy, not a setting of the app.
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        env.setdefault(name, "1")
    if port is not None:
        env["PORT"], env["HOST"] = str(port), "127.0.0.1"
    if fd is not None:
        # app.run() serves on the socket inherited as this descriptor (werkzeug's
        # hand-over from its reloader to the serving process) instead of binding
        # HOST:PORT itself; otherwise the same server. Only the start-up banner
        # is not printed.
        env["WERKZEUG_RUN_MAIN"], env["WERKZEUG_SERVER_FD"] = "true", str(fd)
    return env


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    """SIGINT, then SIGTERM, then SIGKILL, each with a bounded wait."""
    if process is None or process.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        process.send_signal(sig)
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def _patched_environ(env: Mapping[str, str]):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _flask_command() -> list[str]:
    """The ``flask`` script beside this interpreter (the venv's), else ``python -m flask``."""
    script = Path(sys.executable).with_name("flask")
    return [str(script)] if script.exists() else [sys.executable, "-m", "flask"]


class ServedExample:
    """``python -m example_app`` in a subprocess, with its own instance folder.

    Use it as a context manager (or call :meth:`stop`): the server is always
    stopped (SIGINT, then SIGTERM, then SIGKILL, each with a bounded wait).
    """

    def __init__(self, instance: Path, *, start_timeout: float = 300.0,
                 env: Mapping[str, str] | None = None) -> None:
        self.instance = Path(instance).resolve()
        #: Settings an operator put in the environment, for the server and every command alike.
        self.env = dict(env or {})
        self.instance.mkdir(parents=True, exist_ok=True)
        self._socket: socket.socket | None = listening_socket()
        self.port = int(self._socket.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.instance.parent / f"{self.instance.name}-server.log"
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._reader: Any = None  # the in-process app over the same instance folder (lazy)
        #: Seconds from the start of the process to the first answer of /health.
        self.started_in = 0.0
        #: ``flask modelguard worker`` processes started by :meth:`start_worker`.
        self.workers: list[subprocess.Popen[bytes]] = []

    # -- the server ---------------------------------------------------------------

    def start(self) -> ServedExample:
        if self._socket is None:
            raise RuntimeError("a ServedExample starts once")
        log = open(self.log_path, "wb")  # a file, not a pipe: a full pipe would stall the server
        try:
            fd = self._socket.fileno()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "example_app"], cwd=ROOT, env=_environment(self.instance, self.port, fd, self.env),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, pass_fds=[fd])
        finally:
            log.close()
            self._socket.close()  # the server's now
            self._socket = None
        started = time.monotonic()
        deadline = started + self.start_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"python -m example_app exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200 and json.loads(response.read()).get("status") == "ok":
                        self.started_in = time.monotonic() - started
                        return self
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"/health did not answer within {self.start_timeout:.0f} s:\n{self.log()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self._socket is not None:  # never started
            self._socket.close()
            self._socket = None
        if self._reader is not None:
            from example_app import guard

            guard.close(self._reader)
            self._reader = None
        process, self.process = self.process, None
        _stop(process)
        for worker in self.workers:
            _stop(worker)
        self.workers.clear()

    def start_worker(self) -> subprocess.Popen[bytes]:
        """``flask --app example_app modelguard worker`` beside the server (with
        ``MODELGUARD_EVENTS`` on Redis, it judges what the server publishes);
        stopped with the server. Its output goes to ``<instance>-worker.log``."""
        with open(self.instance.parent / f"{self.instance.name}-worker.log", "ab") as log:
            worker = subprocess.Popen([*_flask_command(), "--app", "example_app", "modelguard", "worker"], cwd=ROOT,
                                      env=_environment(self.instance, extra=self.env), stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(worker)
        return worker

    def worker_log(self, tail: int = 4000) -> str:
        try:
            return (self.instance.parent / f"{self.instance.name}-worker.log").read_text(errors="replace")[-tail:]
        except OSError:
            return "(no worker log)"

    def __enter__(self) -> ServedExample:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return "(no server log)"

    # -- the operator's CLI, in the same instance folder ---------------------------

    def flask(self, *args: str, timeout: float = 120.0) -> str:
        """``flask --app example_app ARGS`` in a subprocess, as an operator runs
        it; its standard output (a non-zero exit raises with both streams)."""
        command = [*_flask_command(), "--app", "example_app", *args]
        done = subprocess.run(command, cwd=ROOT, env=_environment(self.instance, extra=self.env), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(command)} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def cli(self, *args: str) -> str:
        """The same ``flask modelguard`` command run in this process, through
        Flask's CLI test runner on an app over the same instance folder (a
        ``flask`` subprocess costs about 4 s of imports on this machine; the
        command, its options and its output are the same)."""
        if not args or args[0] != "modelguard":
            raise ValueError("only 'modelguard ...' commands run in-process")
        from flask_modelguard.cli import modelguard_cli

        result = self.reader.test_cli_runner().invoke(modelguard_cli, list(args[1:]))
        if result.exit_code != 0:
            raise RuntimeError(f"flask --app example_app {shlex.join(args)} exited with {result.exit_code}:\n"
                               f"{result.output}\n{result.exception!r}")
        return result.stdout

    @property
    def reader(self) -> Any:
        """``example_app.create_app()`` in this process over the server's instance
        folder, as every ``flask --app example_app`` command builds it: it
        handles no request; the CLI and the score history read through it."""
        if self._reader is None:
            from example_app import create_app

            with _patched_environ(_environment(self.instance, extra=self.env)):
                self._reader = create_app()
        return self._reader

    def health(self) -> tuple[int, dict[str, Any]]:
        """``GET /modelguard/api/health`` with an admin token (made once, as an operator does)."""
        if not hasattr(self, "_admin_token"):
            out = self.cli("modelguard", "create-admin-token", f"ops-{uuid.uuid4().hex[:8]}")
            self._admin_token = out.rsplit(": ", 1)[1].strip()
        req = urllib.request.Request(f"{self.url}/modelguard/api/health",
                                     headers={"Authorization": f"Bearer {self._admin_token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def create_account(self, name: str, *, tier: str = "pro", limits: str | None = None,
                       subprocess_cli: bool = False) -> str:
        """``flask modelguard create-account NAME --tier TIER [--limits L]``; the printed key."""
        args = ["modelguard", "create-account", name, "--tier", tier, *(["--limits", limits] if limits else [])]
        out = self.flask(*args) if subprocess_cli else self.cli(*args)
        match = _KEY.search(out)
        if match is None:
            raise RuntimeError(f"no 'API key: mg_...' line in the output of create-account:\n{out}")
        return match.group(1)

    def accounts(self, *, subprocess_cli: bool = False) -> dict[str, dict[str, Any]]:
        """``flask modelguard list-accounts --json``, by account name."""
        args = ("modelguard", "list-accounts", "--json")
        out = self.flask(*args) if subprocess_cli else self.cli(*args)
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return {row["name"]: row for row in rows}

    def score_history(self, name: str) -> list[dict[str, Any]]:
        """``guard.score_history(name)``: every evaluation of the account, oldest first."""
        from example_app import guard

        with self.reader.app_context():
            return guard.score_history(name)


# -- the simulated world of the digits example, built without the server -----------


# -- traffic -----------------------------------------------------------------------------


def account_names(actor: Actor) -> list[str]:
    return [actor.name] if actor.accounts == 1 else [f"{actor.name}#{k}" for k in range(actor.accounts)]


@dataclass
class Sent:
    """What one actor got answered, in order: (account index, inputs) per answered request."""

    order: list[tuple[int, int]] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    def total_when(self, account: int, queries: int) -> int:
        """The actor's queries over all its accounts at the moment ``account`` had sent ``queries``."""
        total = mine = 0
        for k, n in self.order:
            total += n
            if k == account:
                mine += n
                if mine >= queries:
                    return total
        return total


class _Traffic:
    """The shared queue of :func:`drive`'s threads: actors ready (at a time),
    how many are out, the first error."""

    def __init__(self, url: str, actors: Sequence[Actor], keys: Mapping[tuple[str, int], str],
                 sent: dict[str, Sent], stop_at: float, request_timeout: float) -> None:
        self.url, self.keys, self.sent = url, keys, sent
        self.stop_at, self.request_timeout = stop_at, request_timeout
        self.ready: deque[tuple[float, Actor]] = deque((0.0, a) for a in actors)
        self.busy = 0
        self.errors: list[BaseException] = []
        self.cond = threading.Condition()

    def take(self) -> Actor | None:
        """The next actor whose wait is over (None: all done, an error, or the deadline)."""
        with self.cond:
            while True:
                if self.errors or time.monotonic() > self.stop_at or (not self.ready and not self.busy):
                    return None
                now = time.monotonic()
                for _ in range(len(self.ready)):
                    at, actor = self.ready[0]
                    if at <= now:
                        self.ready.popleft()
                        self.busy += 1
                        return actor
                    self.ready.rotate(-1)
                self.cond.wait(0.05)

    def give_back(self, actor: Actor | None, at: float = 0.0) -> None:
        with self.cond:
            self.busy -= 1
            if actor is not None:
                self.ready.append((at, actor))
            self.cond.notify_all()

    def send(self, transport: HTTPTransport, actor: Actor) -> None:
        """The actor's next request, its answer handed back to it; the actor back in the queue."""
        request = actor.next()
        if request is None:
            self.give_back(None)
            return
        status, payload, headers = transport.post(
            "/predict", {"instances": request.inputs.tolist()}, self.keys[(actor.name, request.account)])
        answer = read_answer(status, payload, headers, len(request.inputs), actor.world.n_classes)
        actor.receive(request, answer)
        record = self.sent.setdefault(actor.name, Sent())
        record.statuses[status] += 1
        if status != 429:
            record.order.append((request.account, len(request.inputs)))
        wait = min(5.0, answer.retry_after or 1.0) if status == 429 else 0.0
        self.give_back(actor, time.monotonic() + wait)

    def loop(self) -> None:
        transport = HTTPTransport(self.url, timeout=self.request_timeout)
        try:
            while (actor := self.take()) is not None:
                try:
                    self.send(transport, actor)
                except Exception as exc:  # handed to the caller, which re-raises it
                    with self.cond:
                        self.errors.append(exc)
                    self.give_back(None)
                    return
        finally:
            transport.connection.close()


def drive(url: str, actors: Sequence[Actor], keys: Mapping[tuple[str, int], str], *,
          sent: dict[str, Sent], caps: Mapping[str, int] | None = None, in_flight: int = 3,
          deadline: float = 300.0, request_timeout: float = 15.0) -> None:
    """Send every actor's requests over HTTP until its budget (or ``caps[name]``,
    a lower budget for this call) is spent; answers go back to the actor.

    ``in_flight`` threads, each with its own kept-alive connection, take the
    actors round-robin, so each actor has one request in flight at most. A
    429 makes the actor wait its ``Retry-After`` (capped at 5 s) in real
    time; other delays are ignored. Raises TimeoutError after ``deadline``
    seconds, and the first error of any thread.
    """
    saved = {a.name: a.budget for a in actors}
    for a in actors:
        if caps and a.name in caps:
            a.budget = min(a.budget, max(a.sent, caps[a.name]))
    traffic = _Traffic(url, actors, keys, sent, time.monotonic() + deadline, request_timeout)
    threads = [threading.Thread(target=traffic.loop, name=f"drive-{i}", daemon=True) for i in range(in_flight)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(1.0, traffic.stop_at - time.monotonic() + request_timeout + 5.0))
    finally:
        for a in actors:
            a.budget = saved[a.name]
    if traffic.errors:
        raise traffic.errors[0]
    if any(t.is_alive() for t in threads) or time.monotonic() > traffic.stop_at:
        left = {a.name: a.budget - a.sent for a in actors if a.sent < (caps or {}).get(a.name, a.budget)}
        raise TimeoutError(f"traffic not done within {deadline:.0f} s; inputs left: {left}")


# -- reading flags --------------------------------------------------------------------


def first_flag(history: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The first evaluation with reasons (a detector verdict)."""
    return next((h for h in history if h["reasons"]), None)


def summary(scores: Mapping[str, Any] | None) -> str:
    """The detectors' figures of one evaluation, short: the malicious score,
    ADD over its threshold, PRADA's W, the random forest, and the mean gap
    between requests (``log_gap`` is log1p of seconds)."""
    if not scores:
        return "no evaluation"
    parts = []
    for key, label in (("malicious", "malicious"), ("add_ratio", "ADD/thr"), ("prada_w", "PRADA W"),
                       ("random_forest", "RF")):
        value = scores.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{label} {value:.3g}")
    gap = scores.get("log_gap")
    if isinstance(gap, (int, float)):
        parts.append(f"gap {np.expm1(gap):.2g} s")
    return ", ".join(parts) or "scores: " + ", ".join(sorted(scores))[:120]


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def replace_world(world: World, **changes: Any) -> World:
    return dataclasses.replace(world, **changes)
