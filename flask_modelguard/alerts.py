"""Alert delivery to a webhook: a JSON POST per flagged account, sent from its
own thread with retries, so a slow or failing receiver never holds up the
guard's worker. Framework-free."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from typing import Any

from . import lifecycle

log = logging.getLogger("flask_modelguard")


class Webhook:
    """POST alerts as JSON to ``url``; each is tried ``retries + 1`` times with
    exponential backoff from ``backoff`` seconds. At most ``max_queue`` wait;
    beyond that (and after the last failed try) an alert is dropped and
    counted in :attr:`dropped`. A 2xx answer is a delivery."""

    def __init__(self, url: str, *, timeout: float = 5.0, retries: int = 3, backoff: float = 0.5,
                 max_queue: int = 1000, headers: dict[str, str] | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must be http(s): {url!r}")
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.headers = {"Content-Type": "application/json", "User-Agent": "flask-modelguard", **(headers or {})}
        self._max_queue = max_queue
        self.delivered = 0
        self.dropped = 0
        self._reset()
        lifecycle.after_fork(self._reset)

    def _reset(self) -> None:
        """A new queue and no thread: a forked child does not deliver its parent's alerts."""
        self._queue: deque[dict[str, Any]] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._busy = False

    def send(self, alert: dict[str, Any]) -> None:
        """Queue ``alert`` for delivery (never blocks)."""
        with self._wake:
            if len(self._queue) >= self._max_queue:
                self.dropped += 1
                return
            self._queue.append(alert)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="modelguard-webhook", daemon=True)
                self._thread.start()
            self._wake.notify()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued alert was delivered or dropped; True if so."""
        deadline = time.monotonic() + timeout
        with self._wake:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.05))
        return True

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue:
                    if not self._wake.wait(30.0):
                        self._thread = None  # idle: a later send starts a new thread
                        return
                alert = self._queue.popleft()
                self._busy = True
            try:
                self._deliver(alert)
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()

    def _deliver(self, alert: dict[str, Any]) -> None:
        data = json.dumps(alert).encode()
        error: Exception
        for attempt in range(self.retries + 1):
            try:
                request = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    if 200 <= response.status < 300:
                        self.delivered += 1
                        return
            except (urllib.error.URLError, OSError, ValueError) as exc:
                error = exc
            else:
                error = RuntimeError(f"status {response.status}")
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        self.dropped += 1
        log.warning("modelguard: alert webhook failed after %d tries (%s); alert dropped",
                    self.retries + 1, error.__class__.__name__)
