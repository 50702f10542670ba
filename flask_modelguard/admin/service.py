"""The admin service: what an operator does to the guard, whichever way they
come (the admin API, the dashboard, ``flask modelguard``).

Every change goes through :class:`AdminService`: each method takes the
*actor* (the admin's name, ``cli:<user>`` from the shell) and writes the
audit entry of its change, once, here. Refusals are typed exceptions of
:mod:`flask_modelguard.exc` (:class:`~flask_modelguard.exc.NotFound`,
:class:`~flask_modelguard.exc.AlreadyExists`,
:class:`~flask_modelguard.exc.InvalidValue`), which each surface renders its
own way. Framework-free: no Flask here (the guard's operations take the app,
or use the current one when given None).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPException
from typing import TYPE_CHECKING, Any, NamedTuple

from ..exc import InvalidValue, MalformedKey, NotFound
from ..keys import KEY_SCHEME, parse_key
from ..ownership import DEFAULT_PROBES
from ..repository import STATUSES

if TYPE_CHECKING:
    from ..extension import ModelGuard
    from ..ownership import Suspect, Verification
    from ..repository import Repository
    from ..runtime import GuardState
    from .store import AdminStore

#: Most seconds a rotated key may stay valid.
MAX_GRACE = 10**8
#: The account fields an operator may change (``update_account``).
ACCOUNT_FIELDS = ("status", "tier", "limits", "flagged", "allowlisted")


@dataclass(frozen=True)
class IssuedKey:
    """A key just issued: ``token`` is the only copy of its secret (show it once)."""

    token: str
    account: str
    #: The prefix of the key it replaces, and that key's grace in seconds (rotation only).
    replaces: str | None = None
    grace: float | None = None

    @property
    def prefix(self) -> str:
        return self.token.split("_")[1]


class Change(NamedTuple):
    """An account before and after an operator changed it."""

    before: dict[str, Any]
    after: dict[str, Any]


@dataclass(frozen=True)
class Page:
    """One page of a listing, and how many items match in all."""

    items: list[dict[str, Any]]
    total: int
    limit: int | None
    offset: int


def _check_changes(changes: dict[str, Any]) -> None:
    """Refuse account changes that name no field, or a value of the wrong kind."""
    unknown = set(changes) - set(ACCOUNT_FIELDS)
    if unknown or not changes:
        raise InvalidValue(f"Give at least one of {', '.join(ACCOUNT_FIELDS)}"
                           + (f", not {', '.join(sorted(unknown))}." if unknown else "."))
    if "status" in changes and changes["status"] not in STATUSES:
        raise InvalidValue(f"status must be one of {', '.join(STATUSES)}.")
    if "tier" in changes and not isinstance(changes["tier"], str):
        raise InvalidValue("tier must be a string.")
    if "limits" in changes and changes["limits"] is not None and not isinstance(changes["limits"], str):
        raise InvalidValue("limits must be a string such as '10/second;1000/day', or null.")
    for flag in ("flagged", "allowlisted"):
        if flag in changes and not isinstance(changes[flag], bool):
            raise InvalidValue(f"{flag} must be true or false.")


def key_prefix(key: str) -> str:
    """The prefix of a key given as its prefix or whole (never keep the whole
    key); NotFound for something that starts like a key and is not one."""
    if not key.startswith(KEY_SCHEME + "_"):
        return key
    try:
        return parse_key(key).prefix
    except MalformedKey as exc:
        raise NotFound(exc.detail) from None


class AdminService:
    """The operator's actions on one guard's accounts, keys, alerts, admin
    tokens, canaries and detectors, each audited under its actor."""

    def __init__(self, guard: ModelGuard, repository: Repository, store: AdminStore, *,
                 app: Any = None, rotation_grace: float = 0.0, store_inputs: bool = False) -> None:
        self.guard, self.repository, self.store, self.app = guard, repository, store, app
        self.rotation_grace = rotation_grace
        #: Whether query events keep their inputs (exports then include them).
        self.store_inputs = store_inputs

    @classmethod
    def of(cls, state: GuardState, app: Any = None) -> AdminService:
        """The service of a guard's per-app state (``app``: None for the current one)."""
        return cls(state.guard, state.repository, state.admin, app=app,
                   rotation_grace=state.settings.rotation_grace, store_inputs=state.settings.store_inputs)

    def _audit(self, actor: str, action: str, target: str | None, before: Any = None, after: Any = None) -> None:
        """The one place an admin action is written to the audit log."""
        self.store.audit(actor, action, target, before, after)

    # -- accounts ---------------------------------------------------------------------

    def accounts(self, *, status: str | None = None, flagged: bool | None = None, tier: str | None = None,
                 search: str | None = None, sort: str = "score", limit: int | None = 50, offset: int = 0,
                 with_reasons: bool = False) -> Page:
        """Accounts filtered, sorted and paged in the database (see
        :meth:`~flask_modelguard.repository.Repository.page_accounts`;
        ``search``: at most 128 printable characters of the name)."""
        if search is not None and (len(search) > 128 or not search.isprintable()):
            raise InvalidValue("The name searched for must be at most 128 printable characters.")
        items, total = self.repository.page_accounts(status=status, flagged=flagged, tier=tier, search=search or None,
                                                     sort=sort, limit=limit, offset=offset, with_reasons=with_reasons)
        return Page(items, total, limit, offset)

    def flagged_accounts(self) -> list[dict[str, Any]]:
        """Every flagged account, highest score first, with its latest ``reasons`` (one query)."""
        return self.accounts(flagged=True, sort="rank", limit=None, with_reasons=True).items

    def create_account(self, actor: str, name: str, *, tier: str | None = None,
                       limits: str | None = None) -> dict[str, Any]:
        """A new account (``tier`` None: the default tier); AlreadyExists if the name is taken."""
        for field, value in (("tier", tier), ("limits", limits)):
            if value is not None and not isinstance(value, str):
                raise InvalidValue(f"{field} must be a string.")
        account = self.guard.create_account(name, tier=tier, limits=limits, app=self.app)
        self._audit(actor, "create-account", name, None, {"tier": account["tier"], "limits": account["limits"]})
        return account

    def update_account(self, actor: str, name: str, **changes: Any) -> Change:
        """Set any of :data:`ACCOUNT_FIELDS` (``limits=None``: the tier's
        again; ``flagged=False`` also asks for new evidence before the
        detectors act again; ``allowlisted=True`` clears the flag). Audited
        with the changed fields' values before and after."""
        _check_changes(changes)
        before = self.repository.get_account(name)
        after = self.guard.update_account(name, app=self.app, **changes)
        self._audit(actor, "update-account", name, {f: before[f] for f in changes}, {f: after[f] for f in changes})
        return Change(before, after)

    # -- keys -------------------------------------------------------------------------

    def issue_key(self, actor: str, account: str) -> IssuedKey:
        issued = IssuedKey(self.guard.issue_key(account, app=self.app), account)
        self._audit(actor, "issue-key", account, None, {"prefix": issued.prefix})
        return issued

    def rotate_key(self, actor: str, key: str, grace: float | None = None) -> IssuedKey:
        """A new key for the owner of ``key`` (prefix or whole key); the old one
        stays valid ``grace`` seconds (None: ``MODELGUARD_ROTATION_GRACE``)."""
        if grace is not None and (isinstance(grace, bool) or not isinstance(grace, (int, float))
                                  or not 0 <= grace <= MAX_GRACE):
            raise InvalidValue(f"grace must be a number of seconds from 0 to {MAX_GRACE}.")
        prefix = key_prefix(key)
        old = self.repository.get_key(prefix)
        grace = self.rotation_grace if grace is None else float(grace)
        issued = IssuedKey(self.guard.rotate_key(prefix, grace=grace, app=self.app), old["account"], prefix, grace)
        self._audit(actor, "rotate-key", prefix, {"prefix": prefix}, {"prefix": issued.prefix, "grace": grace})
        return issued

    def revoke_key(self, actor: str, key: str) -> dict[str, Any]:
        """Revoke ``key`` (prefix or whole key) now; audited under its prefix only."""
        row = self.guard.revoke_key(key_prefix(key), app=self.app)
        revoked = row["revoked_at"]
        self._audit(actor, "revoke-key", row["prefix"], None,
                    {"revoked_at": revoked.isoformat() if isinstance(revoked, dt.datetime) else revoked})
        return row

    # -- alerts and evidence ----------------------------------------------------------

    def acknowledge_alert(self, actor: str, alert_id: int) -> dict[str, Any]:
        """Acknowledge an alert by ``actor``; ``changed`` is False if it already was."""
        row = self.store.acknowledge(alert_id, actor)
        self._audit(actor, "acknowledge-alert", str(alert_id), None,
                    {"acknowledged_by": row["acknowledged_by"], "changed": row["changed"]})
        return row

    def export_events(self, actor: str, account: str, *, since: float | None = None, until: float | None = None,
                      fmt: str = "jsonl") -> Iterator[dict[str, Any]]:
        """An account's query events in time order (streamed; with inputs
        when they are stored); the export is audited when it starts."""
        account_id = self.repository.get_account(account)["id"]
        rows = self.store.events(account_id, since, until, self.store_inputs)
        self._audit(actor, "export-events", account, None, {"format": fmt, "since": since, "until": until})
        return rows

    def export_evidence(self, actor: str, account: str) -> dict[str, Any]:
        """The account's hash-chained evidence bundle (:mod:`~flask_modelguard.evidence`), audited with its head."""
        from ..evidence import bundle

        records = self.repository.evidence_records(account)
        found = bundle(account, records, self.store.now().isoformat())
        self._audit(actor, "export-evidence", account, None, {"records": len(records), "head": found["head"]})
        return found

    def verify_watermark(self, actor: str, account: str, *, url: str | None = None, suspect: Suspect | None = None,
                         predictions: Any = None, max_probes: Any = DEFAULT_PROBES, **options: Any) -> Verification:
        """Test a suspect model for ``account``'s watermarks, from at most
        ``max_probes`` of them: ask it at ``url`` (its prediction API) or as
        ``suspect`` (a function of inputs), or check ``predictions``, its
        labels for the account's watermark inputs in order (one per input)."""
        from ..ownership import http_suspect, verify

        if sum(x is not None for x in (url, suspect, predictions)) != 1:
            raise InvalidValue("Give one of url, suspect or predictions.")
        if isinstance(max_probes, bool) or not isinstance(max_probes, int) or not 1 <= max_probes <= 10_000:
            raise InvalidValue("max_probes must be an integer from 1 to 10000.")
        if predictions is not None:
            records = self.guard.watermark_records(account, max_probes, app=self.app)
            if not isinstance(predictions, list) or len(predictions) != len(records):
                raise InvalidValue(f"predictions must list {len(records)} labels, one per watermark input.")
            result = verify(account, records, predictions, **options)
        else:
            if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
                raise InvalidValue("url must be an http(s) URL.")
            try:
                result = self.guard.verify_watermark(account, suspect or http_suspect(str(url)), max_probes=max_probes,
                                                     app=self.app, **options)
            except (OSError, ValueError, HTTPException) as exc:  # unreachable, or an answer that is not one
                raise InvalidValue(f"Could not query the suspect ({exc.__class__.__name__}).") from None
        self._audit(actor, "verify-watermark", account, None,
                    {"claimed": result.claimed, "log2_p": result.log2_p, "url": url})
        return result

    def verify_probability_mark(self, actor: str, owner: Any, suspect: Any, account: str | None = None) -> list[Any]:
        """Test a suspect's probabilities (``suspect``, with the owner's model's own,
        ``owner``, for the same probe inputs) for ``account``'s probability
        mark, or every account's; most significant first. Audited."""
        try:
            results = self.guard.verify_probability_mark(owner, suspect, account, app=self.app)
        except (TypeError, ValueError) as exc:  # ragged, not numbers, or shapes that differ
            raise InvalidValue(f"owner and suspect must be equal-sized lists of probability vectors ({exc}).") from None
        best = results[0] if results else None
        self._audit(actor, "verify-mark", account, None, {"claimed": [r.account for r in results if r.claimed],
                                                           "log2_p": best.log2_p if best else 0.0,
                                                           "probes": best.probes if best else 0})
        return results

    # -- admin tokens and dashboard sessions ---------------------------------------------

    def create_admin_token(self, actor: str, name: str) -> str:
        """A new admin token ``name`` (the only copy); AlreadyExists if the name is taken."""
        token = self.store.create_token(name)
        self._audit(actor, "create-admin-token", name)
        return token

    def revoke_admin_token(self, actor: str, name: str) -> None:
        self.store.revoke_token(name)
        self._audit(actor, "revoke-admin-token", name)

    def sign_in(self, actor: str, token_prefix: str) -> str:
        """A dashboard session for ``actor`` signed in with that admin token; returns its id."""
        sid = self.store.start_session(actor, token_prefix)
        self._audit(actor, "dashboard-login", actor)
        return sid

    def sign_out(self, sid: str) -> None:
        """End a dashboard session (a copy of its cookie then signs nobody in)."""
        self.store.end_session(sid)

    # -- canaries and detectors -------------------------------------------------------

    def purge_events(self, actor: str, older_than: float) -> int:
        """Delete the query events older than ``older_than`` seconds (watermark
        records, evaluations and alerts stay); returns how many."""
        if not older_than > 0:
            raise InvalidValue("older_than must be a number of seconds > 0.")
        purged = self.repository.purge_events(self.repository.clock() - older_than)
        self._audit(actor, "purge-events", None, None, {"older_than": older_than, "purged": purged})
        return purged

    def add_canaries(self, actor: str, inputs: list[Any], note: str | None = None) -> int:
        """Register honey-trap model inputs; returns how many were new."""
        added = self.guard.add_canaries(inputs, note, app=self.app)
        self._audit(actor, "add-canaries", None, None, {"added": added, "note": note})
        return added

    def fit_reference(self, actor: str, inputs: Any, labels: Any, *, source: str, target: str) -> Any:
        """Fit ADD's reference (used at once, stored for the other processes);
        ``target``: what the audit entry names (e.g. the file it came from)."""
        reference = self.guard.fit_reference(inputs, labels, app=self.app, source=source)
        self._audit(actor, "fit-reference", target, None, {"inputs": len(inputs), "classes": len(reference.classes)})
        return reference

    def fit_detectors(self, actor: str, data: dict[str, Any], *, target: str) -> Any:
        """Train the supervised detectors and the ensemble on a labelled set (stored)."""
        trained = self.guard.fit_detectors(data, app=self.app)
        self._audit(actor, "fit-detectors", target, None, {"rows": len(data["rows"]), "accounts": trained.accounts})
        return trained

    def calibrate(self, actor: str, **options: Any) -> Any:
        """Train the detectors on simulated traffic against the app's own model
        (see :func:`flask_modelguard.calibration.calibrate`)."""
        result = self.guard.calibrate(app=self.app, **options)
        self._audit(actor, "calibrate", None, None, result.summary())
        return result
