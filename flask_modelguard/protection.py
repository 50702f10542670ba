"""Route options and output protection. Framework-free.

:class:`RouteOptions` are the keyword arguments of ``@protect``;
:class:`OutputProtector` rewrites a view's JSON answer according to the
route's :class:`~flask_modelguard.transforms.OutputPolicy`: watermark answers
for everyone, the route's transforms for ordinary accounts, the suspicious
policy for flagged ones. It also spots honey-trap (canary) inputs.
"""

from __future__ import annotations

import logging
import threading
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import probmark
from .events import fingerprint
from .exc import AnswerWithheld
from .payload import LIST_KEYS, AutoAdapter, Reading, describe, instances, make_adapter
from .transforms import (
    MARK_KINDS,
    Answer,
    KeyedRandom,
    LabelOnly,
    OutputPolicy,
    ProbabilityMark,
    Transform,
    apply,
    parse_all,
)
from .transforms.base import _number

log = logging.getLogger("flask_modelguard")

#: A keyed wrong answer to record: (fingerprint, input, served label, model label, classes, kind, null rate).
Mark = tuple[str, Any, Any, Any, int, str, float]


@dataclass(frozen=True, eq=False)
class RouteOptions:
    """Options of one protected route (the keyword arguments of :func:`protect`).

    Every option is keyword-only with a default, so callers written today keep
    working when later releases add more. ``None`` means "from configuration".
    """

    #: Units a request consumes from the account's limits: an int, a callable
    #: of the decoded JSON body, or None for "number of instances" (1 for a
    #: single input, N for ``{"instances": [...N...]}``).
    cost: int | Callable[[Any], int] | None = None
    #: Route name in the query log; default the view's endpoint.
    name: str | None = None
    #: Output transforms for ordinary accounts (strings or Transform objects);
    #: default ``MODELGUARD_TIER_OUTPUT`` for the account's tier, else ``MODELGUARD_OUTPUT``.
    output: Any = None
    #: Output transforms for flagged accounts; default ``MODELGUARD_SUSPICIOUS_OUTPUT``.
    suspicious_output: Any = None
    #: Watermark fraction; default ``MODELGUARD_WATERMARK`` (0 turns it off).
    watermark: float | None = None
    #: Probability mark strength; default ``MODELGUARD_PROBABILITY_MARK`` (0 turns it off).
    probability_mark: float | None = None
    #: Where the probabilities are: None (common shapes), a dotted path, a
    #: ``(read, write)`` pair of functions, or an adapter object.
    adapter: Any = None
    #: The model inputs of a request body (for fingerprints, watermarks and
    #: canaries): a function of the decoded body; default ``instances``,
    #: ``inputs``, ``[features]`` or ``[body]``.
    inputs: Callable[[Any], list[Any]] | None = None
    #: Limits of this route, per account, on top of the account's own
    #: (``"10/minute"``): a costly route can have a tighter budget.
    limits: str | None = None

    def __post_init__(self) -> None:
        if self.output is not None:
            object.__setattr__(self, "output", parse_all(self.output))
        if self.suspicious_output is not None:
            object.__setattr__(self, "suspicious_output", parse_all(self.suspicious_output))
        object.__setattr__(self, "adapter", make_adapter(self.adapter))
        # Checked here, so that a bad value fails at import, not on every request.
        for name, high in (("watermark", 1.0), ("probability_mark", 0.5)):
            if getattr(self, name) is not None:
                _number(getattr(self, name), f"@protect({name}=...)", 0.0, high)
        if self.limits is not None:
            from .limitset import parse_limits

            parse_limits(self.limits)  # a malformed limit fails at import, not on the first request

    def cost_of(self, body: Any) -> int:
        cost = self.cost
        if cost is None:
            return max(1, len(instances(body)))
        if callable(cost):
            return max(1, int(cost(body)))
        return max(1, int(cost))


def _marked_answer(payload: Any, rng: KeyedRandom, mark: ProbabilityMark) -> Any:
    """``{"probabilities": [...], ...}`` with the mark, as the general path
    (:class:`~.payload.AutoAdapter`, :func:`~.transforms.apply`) writes it:
    the floats lifted, every other key as it was; None for any other shape."""
    if type(payload) is not dict or any(isinstance(payload.get(key), list) for key in LIST_KEYS):
        return None
    vector = payload.get("probabilities")
    if type(vector) is not list or not vector:
        return None
    try:
        row = array("d", vector).tolist()  # the floats np.asarray(vector, float64) holds
    except (TypeError, OverflowError):
        return None
    key = rng.account_key
    if key is None:
        return None
    return {**payload, "probabilities": probmark.lift_row(row, key, mark.strength)}


class OutputProtector:
    """Applies output policies to answers; keeps the canary set of this process."""

    def __init__(
        self,
        key: bytes,
        *,
        output: Any = (),
        tier_output: Mapping[str, Any] | None = None,
        suspicious_output: Any = ("misinformation",),
        watermark: float = 0.0025,
        watermark_raised: float | None = None,
        watermark_from: float = 0.35,
        probability_mark: float = 0.0,
        unrecognised: str = "pass",
    ) -> None:
        self.key = key
        self.output: tuple[Transform, ...] = parse_all(output)
        self.tier_output = {tier: parse_all(spec) for tier, spec in (tier_output or {}).items()}
        self.suspicious: tuple[Transform, ...] = parse_all(suspicious_output)
        self.watermark = watermark
        #: The watermark rate of accounts at the flag threshold, and the score it starts rising at.
        self.watermark_raised, self.watermark_from = watermark_raised, watermark_from
        self.probability_mark = probability_mark
        self.canaries: frozenset[str] = frozenset()
        #: Accounts caught by a canary in this process, treated as flagged at once.
        self.caught: set[int] = set()
        self._policies: dict[tuple[RouteOptions, str], OutputPolicy] = {}
        self._lock = threading.Lock()
        #: Answers that could not be protected (shape unknown, labels not rewritable), in all and by route.
        self.unrecognised = 0
        self.unrecognised_routes: dict[str, int] = {}
        #: What happens to them: "pass" (sent as the model gave them) or "withhold" (502).
        self.unrecognised_mode = unrecognised
        #: Told the route of each (the metrics).
        self.on_unprotected: Callable[[str], None] | None = None
        #: Answers a transform failed on (passed through untouched, logged).
        self.errors = 0
        #: Whether a single answer that only the probability mark changes skips
        #: the general path (the same answer, a fifth of the time; tests compare the two).
        self.fast_path = True

    def policy(self, options: RouteOptions, tier: str) -> OutputPolicy:
        found = self._policies.get((options, tier))
        if found is None:
            found = OutputPolicy(
                transforms=options.output if options.output is not None else self.tier_output.get(tier, self.output),
                suspicious=options.suspicious_output if options.suspicious_output is not None else self.suspicious,
                watermark=options.watermark if options.watermark is not None else self.watermark,
                watermark_raised=self.watermark_raised, watermark_from=self.watermark_from,
                probability_mark=self.probability_mark if options.probability_mark is None else options.probability_mark,
            )
            with self._lock:
                if len(self._policies) > 10_000:
                    self._policies.clear()
                self._policies[(options, tier)] = found
        return found

    def add_canaries(self, fingerprints: list[str]) -> None:
        with self._lock:
            self.canaries = self.canaries | frozenset(fingerprints)

    def treats_as_flagged(self, account_id: int, flagged: bool) -> bool:
        """Whether an account's answers go out as a flagged account's: flagged in
        storage (``flagged``, from the key cache), or caught by a canary in this
        process since (the worker flags it in storage shortly). The one test."""
        return flagged or account_id in self.caught

    def protect(
        self,
        payload: Any,
        body: Any,
        account_id: int,
        flagged: bool,
        score: float,
        policy: OutputPolicy,
        options: RouteOptions,
        route: str = "",
    ) -> tuple[Any, list[Mark], bool, list[str] | None]:
        """The answer to send, the watermark answers in it, whether the
        request held a canary (the account is then treated as flagged), and
        the inputs' fingerprints when they were computed (the worker reuses them).

        A flagged account's answer goes through the same steps as anyone's
        (the suspicious transforms come first, then the route's own), and an
        answer that cannot be protected is handled alike for every account,
        by ``unrecognised``: "pass" sends it as the model gave it, "withhold"
        raises :class:`~flask_modelguard.exc.AnswerWithheld`; either way it
        is counted and its route logged once. Answers of a label-only policy
        are withheld rather than sent whole.
        """
        flagged = self.treats_as_flagged(account_id, flagged)
        pipeline = policy.pipeline(flagged)
        canaries = self.canaries
        if not pipeline and not canaries:
            return payload, [], False, None
        try:
            inputs = options.inputs(body) if options.inputs is not None else instances(body)
            fingerprints = [fingerprint(x, self.key) for x in inputs]
        except Exception:
            return self._failed(payload, route, policy), [], False, None
        canary = bool(canaries) and not canaries.isdisjoint(fingerprints)
        if canary and not flagged:
            self.caught.add(account_id)  # until the worker has flagged it in the database
            pipeline = policy.pipeline(True)
        if not pipeline:
            return payload, [], canary, fingerprints
        try:
            new, marks = self._transform(payload, body, account_id, score, policy, options, route, pipeline,
                                         inputs, fingerprints)
        except AnswerWithheld:
            raise
        except Exception:
            return self._failed(payload, route, policy), [], canary, fingerprints
        return new, marks, canary, fingerprints

    def _transform(self, payload: Any, body: Any, account_id: int, score: float, policy: OutputPolicy,
                   options: RouteOptions, route: str, pipeline: tuple[Transform, ...], inputs: list[Any],
                   fingerprints: list[str]) -> tuple[Any, list[Mark]]:
        """Read the answer with the route's adapter, run ``pipeline``, write it back."""
        rng = KeyedRandom.for_inputs(self.key, account_id, fingerprints, score)
        active = tuple(t for t in pipeline if not t.skips(rng))  # e.g. a watermark no input of this request draws
        if not active:
            return payload, []
        if self.fast_path and len(active) == 1 and len(fingerprints) == 1 and type(active[0]) is ProbabilityMark \
                and type(options.adapter) is AutoAdapter:
            marked = _marked_answer(payload, rng, active[0])
            if marked is not None:
                return marked, []
        reading = options.adapter.read(payload)
        if reading is None:
            return self._unprotected(payload, route, None, policy), []
        if not reading.writes_labels and not all(t.keeps_argmax for t in pipeline):
            # Labels outside the adapter's reach stay the model's, for every
            # account alike: only the transforms that keep them run.
            self._unprotected(payload, route, reading, policy)
            active = tuple(t for t in active if t.keeps_argmax)
        n = len(reading.answer.labels)
        if len(fingerprints) != n:  # inputs and answers do not pair up: key on the body and position
            fingerprints = [fingerprint([body, i], self.key) for i in range(n)]
            inputs = [body] * n
            rng = KeyedRandom.for_inputs(self.key, account_id, fingerprints, score)
            active = tuple(t for t in pipeline if not t.skips(rng) and (reading.writes_labels or t.keeps_argmax))
        answer = apply(active, reading.answer, rng)
        return reading.write(answer), self._marks(reading, answer, fingerprints, inputs)

    def _failed(self, payload: Any, route: str, policy: OutputPolicy) -> Any:
        """Protection raised: counted, logged now and then, answered as an unprotected answer."""
        with self._lock:
            self.errors += 1
            errors = self.errors
        if errors == 1 or errors % 1000 == 0:
            log.exception("modelguard: output protection failed (%d so far)", errors)
        return self._unprotected(payload, route, None, policy, counted=False)

    def _unprotected(self, payload: Any, route: str, reading: Reading | None, policy: OutputPolicy,
                     counted: bool = True) -> Any:
        """An answer the pipeline cannot protect (its shape unknown, or labels
        the adapter cannot rewrite): the same for every account, by mode."""
        if counted:
            with self._lock:
                self.unrecognised += 1
                self.unrecognised_routes[route] = self.unrecognised_routes.get(route, 0) + 1
                first = self.unrecognised_routes[route] == 1
            if self.on_unprotected is not None:
                self.on_unprotected(route)
            if first:
                if reading is not None:
                    what, done = ("not fully protected: its labels cannot be rewritten by the route's adapter",
                                  "only transforms that keep the labels ran (no watermark, no misinformation)")
                else:
                    what, done = f"not protected: no adapter recognises its shape {describe(payload)}", \
                        "it was sent as the model gave it"
                if self.unrecognised_mode == "withhold":
                    done = "it was withheld (502)"
                log.warning("modelguard: an answer of route %r is %s; %s (MODELGUARD_UNRECOGNISED=%r, the same for "
                            "every account). See docs/output-protection.md for the shapes and adapters.",
                            route, what, done, self.unrecognised_mode)
        if self.unrecognised_mode == "withhold" or any(isinstance(t, LabelOnly) for t in policy.transforms):
            raise AnswerWithheld("The answer could not be protected as this route requires.")
        return payload

    @staticmethod
    def _marks(reading: Reading, answer: Answer, fingerprints: list[str], inputs: list[Any]) -> list[Mark]:
        """The keyed wrong answers to record as evidence (watermark, poison,
        misinformation): served as the keyed choice made them (a later step
        may have moved a label) and unlike the model. Each carries its kind and
        its null rate: the highest chance, under the keyed draw, of any class
        but the model's, given that the answer differs from the model."""
        if answer.mark_labels is None or answer.mark_dist is None or answer.mark_kinds is None:
            return []
        k = reading.answer.probs.shape[1]
        model = reading.answer.labels
        keep = (answer.mark_labels >= 0) & (answer.labels == answer.mark_labels) & (answer.labels != model)
        marks = []
        for i in np.flatnonzero(keep):
            dist = answer.mark_dist[i].copy()
            dist[model[i]] = 0.0
            total = dist.sum()
            rate = float(dist.max() / total) if total > 0 else 1.0
            marks.append((fingerprints[i], inputs[i], reading.label_value(int(answer.labels[i])),
                          reading.label_value(int(model[i])), k, MARK_KINDS[answer.mark_kinds[i]], rate))
        return marks
