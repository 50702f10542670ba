"""Requests per second of the example server under gunicorn, guarded and not,
driven over real HTTP by a load generator (wrk), measured in one run.

Serves, each under ``gunicorn -w 2`` on its own loopback port and all at once:

- **bare**: the example app without the guard;
- **guarded-memory**: the guard with its defaults (SQLite query log, limits in
  process memory, detection on, the in-process worker);
- **guarded-redis**: the same with the limits in Redis (skipped when Redis is
  not reachable at ``--redis``);
- **flask-limiter**: Flask-Limiter alone (memory storage, one limit);
- **guarded-stream** and **guarded-stream-redis**: guarded-memory and
  guarded-redis with ``MODELGUARD_EVENTS`` on Redis: the serving processes only
  publish, a ``flask modelguard worker`` process beside them judges the events
  (its CPU is reported apart; it shares the machine's cores with gunicorn, and
  each round waits until it has read everything before the next app runs);
- **guarded-nodetect** (with ``--apps``): guarded-memory with detection off
  (what serving costs when the detectors run elsewhere).

The guarded apps serve what ``make run`` serves: the detectors calibrated on
the example model (once per run, ``--no-calibrate`` skips it) and the
probability mark. Each request is a random held-out digit (``--inputs``) from
a random account (``--accounts``), so the detectors see new inputs as they
would from real users, not one input repeated.

Then drives them in alternating rounds (``--rounds``, the order rotated each
round so drift on a shared machine hits all alike) with ``wrk`` for
``--seconds`` each, and prints, against bare: requests per second (median of
the rounds' ratios and their spread), p50 and p99 latency ratios, and CPU per
request of the serving processes, split into the request thread (gunicorn's
sync worker serves in its main thread) and the others (the guard's worker,
its webhook). Read the ratios: absolute figures vary a lot on shared machines.

    apt-get install wrk      # Debian's package
    python benchmarks/throughput.py [--rounds 5] [--seconds 10] [--connections 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

#: Limits too high to refuse anything, shaped like the default tiers (three windows).
THREE_LIMITS = "1000000/second;100000000/hour;1000000000/day"
APPS = ("bare", "guarded-memory", "guarded-redis", "guarded-stream", "guarded-stream-redis", "flask-limiter")
_NEEDS_REDIS = ("guarded-redis", "guarded-stream", "guarded-stream-redis")
_CLOCK_TICK = os.sysconf("SC_CLK_TCK")


# -- the apps gunicorn serves ------------------------------------------------------------


def _config(kind: str, tmp: str) -> dict[str, Any]:
    config: dict[str, Any] = {"MODEL_CACHE_DIR": tmp, "SECRET_KEY": "throughput-bench"}
    if kind.startswith("guarded"):
        config["MODELGUARD_DATABASE_URL"] = f"sqlite:///{tmp}/{kind}.db"
        config["MODELGUARD_NAMESPACE"] = f"bench-{os.path.basename(tmp)}-{kind}"
    if kind in ("guarded-redis", "guarded-stream-redis"):
        config["MODELGUARD_STORAGE_URI"] = os.environ["THROUGHPUT_REDIS"]
    if kind.startswith("guarded-stream"):
        config["MODELGUARD_EVENTS"] = os.environ["THROUGHPUT_REDIS"]
    if kind == "guarded-nodetect":
        config["MODELGUARD_DETECTION"] = False
    return config


def serve(kind: str) -> Any:
    """The WSGI app of ``kind`` (gunicorn's entry point: ``benchmarks.throughput:serve('bare')``)."""
    import logging

    from example_app import create_app

    logging.getLogger("flask_modelguard").setLevel(logging.ERROR)  # memory:// with 2 workers warns, as it should
    tmp = os.environ["THROUGHPUT_TMP"]
    app = create_app(_config(kind, tmp), guarded=kind.startswith("guarded"))
    if kind == "flask-limiter":
        from flask_limiter import Limiter
        from flask_limiter.util import get_remote_address

        Limiter(get_remote_address, app=app, default_limits=["1000000/second"], storage_uri="memory://")
    return app


def _calibrated(tmp: str) -> str:
    """A guard database with the detectors calibrated on the example model, as
    ``make run`` leaves it (made once per run, copied for every guarded app)."""
    path = os.path.join(tmp, "calibrated.db")
    if not os.path.exists(path):
        from example_app import create_app, guard

        app = create_app({**_config("guarded-memory", tmp), "MODELGUARD_DATABASE_URL": f"sqlite:///{path}"})
        with app.app_context():
            guard.calibrate(app)
        guard.close(app)
    return path


def _keys(kind: str, tmp: str, accounts: int, calibrate: bool) -> list[str]:
    """``accounts`` accounts with limits that never refuse, and a key of each (made before serving)."""
    if not kind.startswith("guarded"):
        return ["none"]
    from example_app import create_app, guard

    if calibrate:
        shutil.copyfile(_calibrated(tmp), os.path.join(tmp, f"{kind}.db"))
    app = create_app(_config(kind, tmp))
    keys = []
    with app.app_context():
        for n in range(accounts):
            guard.create_account(f"bench-{n}", limits=THREE_LIMITS)
            keys.append(guard.issue_key(f"bench-{n}"))
    guard.close(app)
    return keys


# -- serving and driving -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    kind: str
    port: int
    process: subprocess.Popen[bytes]
    script: str
    consumer: subprocess.Popen[bytes] | None = None  # `flask modelguard worker`, for the stream kinds

    def workers(self) -> list[int]:
        """The gunicorn worker processes (children of the master)."""
        try:
            with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as fh:
                return [int(p) for p in fh.read().split()]
        except OSError:
            return []


def _start(kind: str, tmp: str, keys: list[str], bodies: list[str], worker_class: str, env: dict[str, str]) -> Server:
    port = _free_port()
    script = os.path.join(tmp, f"{kind}.lua")
    with open(script, "w") as fh:  # each request: a random input from a random account
        fh.write(f"local bodies = {{{','.join(json.dumps(b) for b in bodies)}}}\n"
                 f"local keys = {{{','.join(json.dumps(k) for k in keys)}}}\n"
                 "math.randomseed(os.time())\n"
                 "request = function()\n"
                 '  local headers = {["Content-Type"] = "application/json",\n'
                 '                   ["Authorization"] = "Bearer " .. keys[math.random(#keys)]}\n'
                 '  return wrk.format("POST", "/predict", headers, bodies[math.random(#bodies)])\n'
                 "end\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "2", "-k", worker_class, "--bind", f"127.0.0.1:{port}",
         "--preload", "--log-level", "warning", f"benchmarks.throughput:serve('{kind}')"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
    )
    server = Server(kind, port, process, script, _start_consumer(kind, env) if "stream" in kind else None)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{kind}: gunicorn exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if len(server.workers()) == 2:
                    return server
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{kind}: gunicorn did not come up")


def _start_consumer(kind: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``flask modelguard worker`` for ``kind``'s app, as an operator starts it."""
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", f"benchmarks.throughput:serve('{kind}')", "modelguard", "worker",
         "--consumer", f"bench-{kind}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _unread(kind: str) -> int:
    """Entries of ``kind``'s event stream not yet judged (acknowledged entries are deleted)."""
    import redis

    client = redis.Redis.from_url(os.environ["THROUGHPUT_REDIS"])
    try:
        return int(client.xlen(f"{_config(kind, os.environ['THROUGHPUT_TMP'])['MODELGUARD_NAMESPACE']}:events"))
    finally:
        client.close()


def _drain(server: Server, timeout: float = 120.0) -> float:
    """Seconds until the worker has judged every event of the last round."""
    start = time.monotonic()
    while _unread(server.kind) and time.monotonic() - start < timeout:
        time.sleep(0.1)
    return time.monotonic() - start


def _cpu(pids: list[int]) -> tuple[float, float]:
    """CPU seconds used so far by the request threads (each worker's main
    thread) and by all other threads of ``pids``."""
    main = other = 0.0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            seconds = (int(fields[11]) + int(fields[12])) / _CLOCK_TICK  # utime + stime
            if int(tid) == pid:
                main += seconds
            else:
                other += seconds
    return main, other


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def _seconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


@dataclass
class Run:
    rps: float
    p50: float
    p99: float
    requests: int
    errors: int
    cpu_main: float  # seconds per request
    cpu_other: float
    cpu_consumer: float = 0.0  # the `flask modelguard worker` process, all threads
    drain: float = 0.0  # seconds it kept reading after the load stopped


def _drive(server: Server, seconds: float, connections: int) -> Run:
    pids = server.workers()
    consumer = [server.consumer.pid] if server.consumer else []
    before, before_consumer = _cpu(pids), sum(_cpu(consumer))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", server.script,
         f"http://127.0.0.1:{server.port}/predict"], capture_output=True, text=True, check=True,
    ).stdout
    after = _cpu(pids)
    drain = _drain(server) if server.consumer else 0.0
    after_consumer = sum(_cpu(consumer))
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    errors += int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    n = max(requests, 1)
    return Run(rps, _seconds(latency["50"]), _seconds(latency["99"]), requests, errors,
               (after[0] - before[0]) / n, (after[1] - before[1]) / n, (after_consumer - before_consumer) / n, drain)


# -- the report ----------------------------------------------------------------------------


@dataclass
class Results:
    runs: dict[str, list[Run]] = field(default_factory=dict)

    def ratios(self, kind: str, attr: str) -> list[float]:
        return [getattr(r, attr) / getattr(b, attr) for r, b in zip(self.runs[kind], self.runs["bare"])]


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):5.3f} ({min(values):.3f}–{max(values):.3f})"


def _report(results: Results, args: argparse.Namespace) -> None:
    print(f"gunicorn -w 2 -k {args.worker_class}, wrk -t1 -c{args.connections}, {args.rounds} rounds × "
          f"{args.seconds:g} s per app; ratios against bare in the same round: median (min–max)")
    print(f"{'app':<20} {'req/s':>8} {'RPS × bare':>22} {'p50 × bare':>22} {'p99 × bare':>22} "
          f"{'CPU µs/req (request + other threads)':>38} {'worker µs/req, drain s':>24} errors")
    for kind, runs in results.runs.items():
        rps = statistics.median(r.rps for r in runs)
        main, other, consumer = (statistics.median(getattr(r, a) for r in runs) * 1e6
                                 for a in ("cpu_main", "cpu_other", "cpu_consumer"))
        drain = max(r.drain for r in runs)
        errors = sum(r.errors for r in runs)
        cells = [_spread(results.ratios(kind, a)) for a in ("rps", "p50", "p99")]
        print(f"{kind:<20} {rps:8.0f} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22} "
              f"{main:14.0f} + {other:5.0f} = {main + other:5.0f} µs {consumer:15.0f}, {drain:5.1f} {errors:>6}")


def _redis_up(url: str) -> bool:
    host, port = re.match(r"redis://([^:/]+):?(\d+)?", url).groups()  # type: ignore[union-attr]
    try:
        with socket.create_connection((host, int(port or 6379)), timeout=0.5):
            return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--worker-class", default="sync")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--apps", default=",".join(APPS))
    parser.add_argument("--accounts", type=int, default=50, help="accounts the requests are spread over")
    parser.add_argument("--inputs", type=int, default=400, help="distinct inputs (held-out digits) sent")
    parser.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                        help="serve without the calibrated ensemble (detection degraded, as EXAMPLE_CALIBRATE=0)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    kinds = [k for k in args.apps.split(",") if k not in _NEEDS_REDIS or _redis_up(args.redis)]
    if "bare" not in kinds:
        kinds.insert(0, "bare")
    from example_app.model import split

    bodies = [json.dumps({"features": [int(v) for v in x]}) for x in split()[1][: args.inputs]]
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        env = {**os.environ, "THROUGHPUT_TMP": tmp, "THROUGHPUT_REDIS": args.redis, "PYTHONPATH": ROOT}
        os.environ.update(THROUGHPUT_TMP=tmp, THROUGHPUT_REDIS=args.redis)
        servers = [_start(k, tmp, _keys(k, tmp, args.accounts, args.calibrate), bodies, args.worker_class, env)
                   for k in kinds]
        try:
            for server in servers:  # warm-up: caches, the workers' threads, the reference
                _drive(server, 2.0, args.connections)
            results = Results({k: [] for k in kinds})
            for r in range(args.rounds):
                for server in servers[r % len(servers):] + servers[: r % len(servers)]:
                    results.runs[server.kind].append(_drive(server, args.seconds, args.connections))
            _report(results, args)
        finally:
            processes = [p for s in servers for p in (s.process, s.consumer) if p is not None]
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(timeout=60)


if __name__ == "__main__":
    main()
