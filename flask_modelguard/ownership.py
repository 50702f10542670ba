"""Ownership verification from keyed wrong answers (DAWN). Framework-free.

Every watermark answer an account received is a deliberately wrong label for
one of its inputs, and so is every poison or misinformation answer a flagged
account received (each records the chance, under its keyed draw, that a model
independent of the key gives the same wrong label: its null rate). A model trained on that account's answers tends to learn
those labels; an independent model agrees with them only by chance (at most
about ``1/(classes - 1)`` per input, less for an accurate model, which gives
the true label instead). Querying a suspect model on the watermark inputs and
counting agreements gives a one-sided binomial test.

How many probes are needed: if a clone agrees on a fraction ``r`` of ``n``
probes, the p-value is about ``P[Binomial(n, q) >= r n]`` with ``q`` the null
rate. For 10 classes (``q = 1/9``): 21 probes reach 2^-64 when the clone
reproduces every watermark label (``r = 1``), 33 at ``r = 0.8``, 89 at
``r = 0.5``, 314 at ``r = 0.3``. :func:`probes_needed` works it out for
other cases.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .payload import read_predictions

#: Default claim threshold: p < 2^-64.
DEFAULT_THRESHOLD_LOG2 = -64.0
#: How many evidence inputs a suspect is asked about by default.
DEFAULT_PROBES = 1000

Suspect = Callable[[list[Any]], Sequence[Any]]


def _log2_sum(terms: Iterable[float]) -> float:
    terms = list(terms)
    top = max(terms)
    if top == -math.inf:
        return -math.inf
    return top + math.log2(sum(2.0 ** (t - top) for t in terms))


def binomial_tail_log2(k: int, n: int, p: float) -> float:
    """log2 of ``P[X >= k]`` for ``X ~ Binomial(n, p)``, exact in log space
    (no underflow at 2^-100 and beyond)."""
    if k <= 0:
        return 0.0
    if k > n:
        return -math.inf
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return 0.0
    lp, lq = math.log2(p), math.log2(1.0 - p)
    ln2 = math.log(2.0)

    def term(i: int) -> float:
        return (math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)) / ln2 + i * lp + (n - i) * lq

    return min(0.0, _log2_sum(term(i) for i in range(k, n + 1)))


def poisson_binomial_tail_log2(k: int, rates: Sequence[float]) -> float:
    """log2 ``P[X >= k]`` for ``X`` the number of successes of independent
    trials with success ``rates`` (probes whose chance agreement differs:
    misinformation answers, routes with different numbers of classes). Exact
    dynamic programming in log space; O(n²) for n probes, in numpy (a few ms
    for a thousand)."""
    if k <= 0:
        return 0.0
    n = len(rates)
    if k > n:
        return -math.inf
    with np.errstate(divide="ignore"):
        lp = np.log2(np.asarray(rates, dtype=np.float64))
        lq = np.log2(1.0 - np.asarray(rates, dtype=np.float64))
    log_dist = np.full(n + 1, -math.inf)  # log2 P[successes = j] after the trials so far
    log_dist[0] = 0.0
    for j in range(n):
        new = log_dist + lq[j]
        new[1 : j + 2] = np.logaddexp2(new[1 : j + 2], log_dist[: j + 1] + lp[j])
        log_dist = new
    return min(0.0, _log2_sum(log_dist[k:].tolist()))


def record_null_rate(record: dict[str, Any]) -> float:
    """The chance that a model independent of the key agrees with a record's
    served label: the keyed draw's highest chance for any class but the
    model's (recorded with it), or a watermark's ``1/(classes - 1)``."""
    rate = record.get("null_rate")
    if rate is not None:
        return float(rate)
    return 1.0 / max(1, int(record["n_classes"]) - 1)


def select_probes(records: Iterable[dict[str, Any]], limit: int | None = None) -> list[dict[str, Any]]:
    """The records the ownership test asks a suspect about, from an account's
    records in chain order: the first of each input, then, when there are more
    than ``limit``, the ``limit`` with the lowest null rates (the rates come
    from the key, not from any suspect, so choosing by them biases nothing)."""
    seen: set[str] = set()
    first = []
    for record in records:
        if record["fingerprint"] not in seen:
            seen.add(record["fingerprint"])
            first.append(record)
    if limit is None or len(first) <= limit:
        return first
    chosen = sorted(range(len(first)), key=lambda i: (record_null_rate(first[i]), i))[:limit]
    return [first[i] for i in sorted(chosen)]


def probes_needed(agreement: float, null_rate: float, threshold_log2: float = DEFAULT_THRESHOLD_LOG2,
                  max_probes: int = 100_000) -> int | None:
    """Fewest probes at which a model agreeing on a fraction ``agreement`` of
    them is claimed (None if not within ``max_probes``)."""
    for n in range(1, max_probes + 1):
        if binomial_tail_log2(math.ceil(agreement * n), n, null_rate) < threshold_log2:
            return n
    return None


@dataclass(frozen=True)
class Verification:
    """The outcome of testing a suspect model against one account's watermarks."""

    account: str
    probes: int
    matches: int
    null_rate: float
    log2_p: float
    threshold_log2: float

    @property
    def p_value(self) -> float:
        return float(2.0 ** self.log2_p)

    @property
    def claimed(self) -> bool:
        """True when the suspect is identified as trained on this account's answers."""
        return self.probes > 0 and self.log2_p < self.threshold_log2

    def summary(self) -> str:
        verdict = "CLAIMED: trained on this account's answers" if self.claimed else "not claimed"
        return (
            f"account {self.account!r}: {self.matches}/{self.probes} keyed wrong labels reproduced; "
            f"mean null rate {self.null_rate:.4f}; p = 2^{self.log2_p:.1f} "
            f"(threshold 2^{self.threshold_log2:.0f}): {verdict}"
        )


def _same(a: Any, b: Any) -> bool:
    """Labels equal as served: 3 and 3.0 match (JSON), 3.7 and 3 do not, "3" and 3 do not."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return bool(a == b)


def verify(
    account: str,
    records: Sequence[dict[str, Any]],
    suspect_labels: Sequence[Any],
    *,
    null_rate: float | None = None,
    threshold_log2: float = DEFAULT_THRESHOLD_LOG2,
) -> Verification:
    """Count the suspect's agreements with the served keyed wrong labels.

    ``records`` are evidence records (``served_label``, ``n_classes``, and
    ``null_rate`` where recorded), ``suspect_labels`` the suspect's labels
    for their inputs, in order. Each record's null rate is its own
    (:func:`record_null_rate`: the keyed draw's chance of the class a model
    independent of the key would give), so the test is Poisson-binomial;
    ``null_rate`` overrides them all.
    """
    if len(records) != len(suspect_labels):
        raise ValueError(f"{len(records)} evidence inputs but {len(suspect_labels)} suspect labels")
    matches = sum(_same(label, r["served_label"]) for r, label in zip(records, suspect_labels))
    if null_rate is not None:
        rates = [null_rate] * len(records)
    else:  # each probe's own chance rate: watermark, poison and misinformation records mix
        rates = [record_null_rate(r) for r in records]
    mean = sum(rates) / len(rates) if rates else 1.0
    if len(set(rates)) <= 1:
        return Verification(account, len(records), matches, mean,
                            binomial_tail_log2(matches, len(records), mean), threshold_log2)
    return Verification(account, len(records), matches, mean,
                        poisson_binomial_tail_log2(matches, rates), threshold_log2)


def empirical_null_rate(records: Sequence[dict[str, Any]], independent: Iterable[Suspect]) -> float:
    """The watermark agreement rate of models known not to be clones
    (add-one smoothed), to use as ``null_rate`` when it exceeds the default."""
    agree = total = 0
    inputs = [r["input"] for r in records]
    for model in independent:
        labels = model(inputs)
        agree += sum(_same(a, r["served_label"]) for r, a in zip(records, labels))
        total += len(records)
    return (agree + 1) / (total + 2)


def _read_bounded(response: Any, max_bytes: int, give_up: float, url: str, deadline: float) -> bytes:
    """An answer's body, at most ``max_bytes``, read a chunk at a time until
    ``give_up`` (a suspect that trickles a byte now and then is cut off too)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > give_up:
            raise ValueError(f"{url} took more than {deadline:.0f} s to answer the watermark inputs")
        chunk = response.read1(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise ValueError(f"{url} answered more than {max_bytes} bytes")
        chunks.append(chunk)


def http_suspect(url: str, headers: dict[str, str] | None = None, batch_size: int = 64, timeout: float = 30.0,
                 max_bytes: int = 8 << 20, deadline: float = 120.0) -> Suspect:
    """A suspect model behind a prediction API that takes ``{"instances": [...]}``
    (the example's format) and answers predictions in a shape
    :func:`~flask_modelguard.payload.read_predictions` understands. Each
    answer may be at most ``max_bytes`` long and the whole test lasts at most
    ``deadline`` seconds (a ValueError otherwise): a suspect cannot hold the
    verifying process."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"the suspect's URL must be http(s): {url!r}")

    def predict(inputs: list[Any]) -> list[Any]:
        labels: list[Any] = []
        give_up = time.monotonic() + deadline
        for start in range(0, len(inputs), batch_size):
            if time.monotonic() > give_up:
                raise ValueError(f"{url} took more than {deadline:.0f} s to answer the watermark inputs")
            chunk = inputs[start : start + batch_size]
            request = urllib.request.Request(
                url, data=json.dumps({"instances": chunk}).encode(), method="POST",
                headers={"Content-Type": "application/json", **(headers or {})},
            )
            left = max(0.1, give_up - time.monotonic())
            with urllib.request.urlopen(request, timeout=min(timeout, left)) as response:
                body = _read_bounded(response, max_bytes, give_up, url, deadline)
            found = read_predictions(json.loads(body))
            if len(found) != len(chunk):
                raise ValueError(f"{url} answered {len(found)} predictions for {len(chunk)} inputs")
            labels.extend(p.label for p in found)
        return labels

    return predict


def file_suspect(path: str, records: Sequence[dict[str, Any]]) -> list[Any]:
    """A suspect's labels from a file: a JSON list in the order of the exported
    watermark inputs, or an object mapping fingerprint → label."""
    with open(path) as fh:
        data = json.load(fh)
    if isinstance(data, dict):
        missing = [r["fingerprint"] for r in records if r["fingerprint"] not in data]
        if missing:
            raise ValueError(f"{path} has no label for {len(missing)} watermark inputs (e.g. {missing[0]})")
        return [data[r["fingerprint"]] for r in records]
    if not isinstance(data, list) or len(data) != len(records):
        raise ValueError(f"{path} must list one label per exported watermark input ({len(records)})")
    return data
