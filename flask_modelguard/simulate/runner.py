"""Drive simulated actors against a served model, through the real guard.

The :class:`Simulation` is a discrete-event loop: each actor's next request
is due at a simulated time; the earliest is sent (through a WSGI test client,
or over HTTP to a live URL), its answer is read back and given to the actor.
With a :class:`~flask_modelguard.simulate.clock.SimulatedClock` the guard,
its rate limits and its timing features all live on simulated time, so a
simulated day takes seconds. Framework-free: it talks WSGI or HTTP.
"""

from __future__ import annotations

import heapq
import http.client
import json
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .actor import Actor, Answer, Request, World
from .clock import SimulatedClock


class Transport(Protocol):
    def post(self, path: str, body: Any, key: str) -> tuple[int, Any, Mapping[str, str]]:
        """POST ``body`` as JSON with the API key; (status, decoded JSON or None, headers)."""


class WSGITransport:
    """Requests through a WSGI app's test client (Flask's ``app.test_client()``)."""

    def __init__(self, client: Any, header: str = "X-API-Key") -> None:
        self.client = client
        self.header = header

    def post(self, path: str, body: Any, key: str) -> tuple[int, Any, Mapping[str, str]]:
        response = self.client.post(path, json=body, headers={self.header: key})
        return response.status_code, response.get_json(silent=True), response.headers


class HTTPTransport:
    """Requests over HTTP/1.1 to a live server (one kept-alive connection)."""

    def __init__(self, url: str, header: str = "X-API-Key", timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.base = parts.path.rstrip("/")
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._connect = lambda: kind(parts.netloc, timeout=timeout)
        self.connection = self._connect()
        self.header = header

    def post(self, path: str, body: Any, key: str) -> tuple[int, Any, Mapping[str, str]]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", self.header: key}
        for attempt in (0, 1):
            try:
                self.connection.request("POST", self.base + path, data, headers)
                response = self.connection.getresponse()
                raw = response.read()
                break
            except (ConnectionError, http.client.HTTPException):
                self.connection.close()
                self.connection = self._connect()
                if attempt:
                    raise
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        return response.status, payload, {k: v for k, v in response.getheaders()}


def read_answer(status: int, payload: Any, headers: Mapping[str, str], n: int, n_classes: int) -> Answer:
    """The :class:`Answer` in a response: labels, and probabilities when every
    prediction carries a vector (top-k answers are completed with zeros)."""
    retry = headers.get("Retry-After")
    answer = Answer(status, retry_after=float(retry) if retry else None)
    remaining, reset = _rate_limit(headers)
    answer.remaining, answer.reset = remaining, reset
    if status != 200 or payload is None:
        return answer
    items = payload.get("predictions") if isinstance(payload, dict) and "predictions" in payload else [payload]
    if not isinstance(items, list) or len(items) != n:
        return Answer(status, remaining=remaining, reset=reset)  # not an answer the simulator can read
    labels, probs = [], []
    for item in items:
        label, vector = _item(item, n_classes)
        labels.append(label)
        probs.append(vector)
    answer.labels = np.asarray(labels)
    if all(p is not None for p in probs):
        answer.probabilities = np.asarray(probs, dtype=np.float64)
    return answer


def _item(item: Any, n_classes: int) -> tuple[Any, np.ndarray | None]:
    if not isinstance(item, dict):
        return item, None
    vector = item.get("probabilities")
    label = item.get("label")
    if not isinstance(vector, list):
        return label, None
    full = np.zeros(n_classes)
    classes = item.get("classes")
    if isinstance(classes, list) and len(classes) == len(vector):  # a top-k "drop" answer
        for c, p in zip(classes, vector):
            if isinstance(c, int) and 0 <= c < n_classes:
                full[c] = float(p)
    elif len(vector) == n_classes:
        full[:] = [float(p) for p in vector]
    else:
        return label, None
    if label is None:
        label = int(full.argmax())
    return label, full


def _rate_limit(headers: Mapping[str, str]) -> tuple[int | None, float | None]:
    """``remaining`` and ``reset`` from the draft ``RateLimit`` header (``"name";r=R;t=T``)."""
    value = headers.get("RateLimit")
    if not value:
        return None, None
    fields = dict(part.strip().split("=", 1) for part in value.split(";")[1:] if "=" in part)
    try:
        return int(fields["r"]), float(fields["t"])
    except (KeyError, ValueError):
        return None, None


@dataclass
class Sent:
    """One request of the simulation, as it happened."""

    actor: str
    account: int
    ts: float
    n: int
    status: int


class Simulation:
    """Run ``actors`` against ``path`` through ``transport``.

    ``keys[(actor name, account index)]`` is the API key each account sends.
    ``clock`` (simulated time) is advanced to each request's due time;
    without it the delays are slept, divided by ``speed`` (``speed=inf``:
    no sleeping). ``every(n_requests)`` is called after each request (the
    evaluation uses it to let the guard's worker catch up, as it does
    between real requests).
    """

    def __init__(
        self,
        transport: Transport,
        world: World,
        actors: list[Actor],
        keys: Mapping[tuple[str, int], str],
        *,
        path: str = "/predict",
        clock: SimulatedClock | None = None,
        speed: float = float("inf"),
        seed: int = 0,
        body: Callable[[np.ndarray], Any] | None = None,
        every: Callable[[int], None] | None = None,
    ) -> None:
        self.transport = transport
        self.world = world
        self.actors = actors
        self.keys = keys
        self.path = path
        self.clock = clock
        self.speed = speed
        self.body = body or (lambda X: {"instances": X.tolist()})
        self.every = every
        self.log: list[Sent] = []
        seeds = np.random.SeedSequence(seed).spawn(len(actors))
        for actor, ss in zip(actors, seeds):
            actor.bind(world, np.random.default_rng(ss))

    def run(self, progress: Callable[[int, int], None] | None = None) -> list[Sent]:
        start = self.clock() if self.clock is not None else time.time()
        self._start = (start, time.monotonic())
        due: list[tuple[float, int, int, Request]] = []
        for i, actor in enumerate(self.actors):
            first = actor.next()
            if first is not None:
                heapq.heappush(due, (start + first.delay, i, 0, first))
        total = sum(a.budget for a in self.actors)
        done = 0
        seq = 1
        while due:
            when, i, _, request = heapq.heappop(due)
            actor = self.actors[i]
            self._wait(when)
            key = self.keys[(actor.name, request.account)]
            status, payload, headers = self.transport.post(self.path, self.body(request.inputs), key)
            answer = read_answer(status, payload, headers, len(request.inputs), self.world.n_classes)
            actor.receive(request, answer)
            self.log.append(Sent(actor.name, request.account, when, len(request.inputs), status))
            if status != 429:
                done += len(request.inputs)
            if self.every is not None:
                self.every(len(self.log))
            if progress is not None:
                progress(done, total)
            following = actor.next()
            if following is not None:
                heapq.heappush(due, (when + following.delay, i, seq, following))
                seq += 1
        return self.log

    def _wait(self, when: float) -> None:
        if self.clock is not None:
            self.clock.set(when)
        elif self.speed != float("inf"):
            simulated_start, real_start = self._start
            pause = real_start + (when - simulated_start) / self.speed - time.monotonic()
            if pause > 0:
                time.sleep(pause)
