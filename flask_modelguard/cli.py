"""``flask modelguard ...``: manage accounts and keys from the shell.

Keys are printed once, when they are created; nothing else ever prints a secret.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy.exc import SQLAlchemyError

from .admin.service import AdminService
from .exc import InvalidValue, ModelGuardError
from .keys import key_hint
from .ownership import DEFAULT_THRESHOLD_LOG2, file_suspect, http_suspect, verify
from .repository import STATUSES
from .runtime import state_of


def _guard() -> Any:
    return state_of(current_app).guard


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into a one-line message and exit code 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ModelGuardError, RuntimeError) as exc:
            raise click.ClickException(str(exc)) from None
        except SQLAlchemyError as exc:
            raise click.ClickException(
                f"Database error: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"
                " (did you run 'flask modelguard init-db'?)"
            ) from None

    return wrapper


def _service() -> AdminService:
    """The admin service: every change made from the shell goes through it (audited as :func:`_actor`)."""
    return AdminService.of(state_of(current_app))


def _actor() -> str:
    from .admin.cli import cli_actor

    return cli_actor()


def _show_key(token: str, what: str) -> None:
    click.echo(f"{what}: {token}")
    click.echo("Store it now: it is shown only once.", err=True)


@click.group("modelguard")
def modelguard_cli() -> None:
    """Manage ModelGuard accounts and API keys."""


@modelguard_cli.command("init-db")
@with_appcontext
@_friendly
def init_db() -> None:
    """Create the guard's tables."""
    _guard().init_db()
    click.echo("ModelGuard tables are ready.")


@modelguard_cli.command("create-account")
@click.argument("name")
@click.option("--tier", help="Tier of the account (default MODELGUARD_DEFAULT_TIER).")
@click.option("--limits", help='Limits replacing the tier\'s, e.g. "5/second;100/day".')
@click.option("--key/--no-key", default=True, show_default=True, help="Also issue an API key.")
@with_appcontext
@_friendly
def create_account(name: str, tier: str | None, limits: str | None, key: bool) -> None:
    """Create an account (and its first API key)."""
    service, actor = _service(), _actor()
    account = service.create_account(actor, name, tier=tier, limits=limits)
    click.echo(f"Created account {account['name']!r} (tier {account['tier']}).")
    if key:
        _show_key(service.issue_key(actor, name).token, "API key")


@modelguard_cli.command("issue-key")
@click.argument("account")
@with_appcontext
@_friendly
def issue_key(account: str) -> None:
    """Issue a new API key for ACCOUNT."""
    _show_key(_service().issue_key(_actor(), account).token, "API key")


@modelguard_cli.command("rotate-key")
@click.argument("key")
@click.option("--grace", type=float, help="Seconds the old key stays valid (default MODELGUARD_ROTATION_GRACE).")
@with_appcontext
@_friendly
def rotate_key(key: str, grace: float | None) -> None:
    """Replace KEY (its prefix or the whole key) with a new one."""
    _show_key(_service().rotate_key(_actor(), key, grace).token, "New API key")


@modelguard_cli.command("revoke-key")
@click.argument("key")
@with_appcontext
@_friendly
def revoke_key(key: str) -> None:
    """Revoke KEY (its prefix or the whole key) now."""
    row = _service().revoke_key(_actor(), key)
    click.echo(f"Revoked {key_hint(row['prefix'])} of account {row['account']!r}.")


@modelguard_cli.command("list-accounts")
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@with_appcontext
@_friendly
def list_accounts(status: str | None, as_json: bool) -> None:
    """List accounts with tier, status and number of live keys."""
    rows = _service().accounts(status=status, sort="name", limit=None).items
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, default=str))
        return
    click.echo(f"{'NAME':<24} {'TIER':<12} {'STATUS':<10} {'KEYS':>4}  LIMITS")
    for row in rows:
        click.echo(
            f"{row['name']:<24} {row['tier']:<12} {row['status']:<10} {row['active_keys']:>4}  {row['limits'] or '-'}"
        )


@modelguard_cli.command("list-keys")
@click.argument("account")
@with_appcontext
@_friendly
def list_keys(account: str) -> None:
    """List the keys of ACCOUNT (prefixes only)."""
    for row in _guard().list_keys(account):
        state = "revoked" if row["revoked_at"] else (f"expires {row['expires_at']}" if row["expires_at"] else "active")
        click.echo(f"{key_hint(row['prefix'])}  created {row['created_at']}  {state}")


@modelguard_cli.command("set-status")
@click.argument("account")
@click.argument("status", type=click.Choice(STATUSES))
@with_appcontext
@_friendly
def set_status(account: str, status: str) -> None:
    """Set ACCOUNT's status: active, suspended or blocked."""
    _service().update_account(_actor(), account, status=status)
    click.echo(f"Account {account!r} is now {status}.")


@modelguard_cli.command("set-tier")
@click.argument("account")
@click.argument("tier")
@with_appcontext
@_friendly
def set_tier(account: str, tier: str) -> None:
    """Move ACCOUNT to TIER."""
    _service().update_account(_actor(), account, tier=tier)
    click.echo(f"Account {account!r} is now on tier {tier}.")


@modelguard_cli.command("set-limits")
@click.argument("account")
@click.argument("limits")
@with_appcontext
@_friendly
def set_limits(account: str, limits: str) -> None:
    """Override ACCOUNT's limits ("5/second;100/day"); "tier" restores the tier's."""
    _service().update_account(_actor(), account, limits=None if limits == "tier" else limits)
    click.echo(f"Account {account!r} limits: {limits}.")


@modelguard_cli.command("flag")
@click.argument("account")
@click.option("--off", is_flag=True, help="Remove the flag.")
@with_appcontext
@_friendly
def flag(account: str, off: bool) -> None:
    """Flag ACCOUNT: its answers follow the suspicious-account policy."""
    _service().update_account(_actor(), account, flagged=not off)
    click.echo(f"Account {account!r} is {'no longer ' if off else ''}flagged.")


@modelguard_cli.command("add-canaries")
@click.argument("file", type=click.File())
@click.option("--note", help="Why these inputs are traps (kept with them).")
@with_appcontext
@_friendly
def add_canaries(file: Any, note: str | None) -> None:
    """Register honey-trap inputs from FILE (a JSON list of model inputs)."""
    inputs = json.load(file)
    if not isinstance(inputs, list) or not inputs:
        raise click.ClickException("FILE must hold a non-empty JSON list of inputs.")
    added = _service().add_canaries(_actor(), inputs, note)
    click.echo(f"{added} new canary input(s) registered ({len(inputs) - added} already known).")


@modelguard_cli.command("export-watermarks")
@click.argument("account")
@click.argument("out", type=click.File("w"))
@click.option("--max-probes", default=250, show_default=True)
@with_appcontext
@_friendly
def export_watermarks(account: str, out: Any, max_probes: int) -> None:
    """Write ACCOUNT's watermark inputs to OUT (JSON), to run a suspect model on offline."""
    records = _guard().watermark_records(account, max_probes)
    json.dump({"account": account, "fingerprints": [r["fingerprint"] for r in records],
               "inputs": [r["input"] for r in records]}, out)
    click.echo(f"{len(records)} watermark input(s) written.", err=True)


@modelguard_cli.command("verify-watermark")
@click.argument("account", required=False)
@click.option("--url", help="Prediction API of the suspect model (takes {\"instances\": [...]}).")
@click.option("--header", "headers", multiple=True, help='Header for --url, "Name: value" (repeatable).')
@click.option("--predictions", type=click.Path(exists=True, dir_okay=False),
              help="The suspect's labels for the exported inputs (JSON list, or fingerprint → label).")
@click.option("--all", "all_accounts", is_flag=True, help="Test every account with watermarks (attribution; needs --url).")
@click.option("--max-probes", default=250, show_default=True)
@click.option("--null-rate", type=float, help="Chance agreement per probe (default 1/(classes-1)).")
@click.option("--threshold-log2", default=DEFAULT_THRESHOLD_LOG2, show_default=True, help="Claim when log2(p) is below.")
@with_appcontext
@_friendly
def verify_watermark(account: str | None, url: str | None, headers: tuple[str, ...], predictions: str | None,
                     all_accounts: bool, max_probes: int, null_rate: float | None, threshold_log2: float) -> None:
    """Test whether a suspect model was trained on ACCOUNT's answers."""
    if (url is None) == (predictions is None):
        raise click.UsageError("Give exactly one of --url and --predictions.")
    if all_accounts == (account is not None):
        raise click.UsageError("Give an ACCOUNT or --all.")
    guard = _guard()
    options: dict[str, Any] = {"max_probes": max_probes, "null_rate": null_rate, "threshold_log2": threshold_log2}
    if predictions is not None:
        if all_accounts:
            raise click.UsageError("--all needs --url (a predictions file answers one account's export).")
        assert account is not None
        records = guard.watermark_records(account, max_probes)
        labels = file_suspect(predictions, records)
        results = [verify(account, records, labels, null_rate=null_rate, threshold_log2=threshold_log2)]
    else:
        if any(":" not in h for h in headers):
            raise click.UsageError('--header takes "Name: value".')
        parsed = dict(h.split(":", 1) for h in headers)
        try:
            suspect = http_suspect(url, {k.strip(): v.strip() for k, v in parsed.items()})  # type: ignore[arg-type]
            results = (guard.attribute(suspect, **options) if account is None
                       else [guard.verify_watermark(account, suspect, **options)])
        except (OSError, ValueError) as exc:  # unreachable, or not an answer: say so, no traceback
            raise click.ClickException(f"Could not test the suspect: {exc}") from None
    for result in results:
        click.echo(result.summary())
    if not any(r.probes for r in results):
        raise click.ClickException("No watermark answers recorded for this account yet.")


@modelguard_cli.command("fit-reference")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@with_appcontext
@_friendly
def fit_reference(file: str) -> None:
    """Fit ADD's reference from FILE: JSON {"inputs": [...], "labels": [...]}
    (model inputs as requests carry them, and the model's labels), or .npz with X and y."""
    from .reference_data import read_source

    try:
        inputs, labels = read_source(file)
    except InvalidValue as exc:
        raise click.ClickException(str(exc)) from None
    reference = _service().fit_reference(_actor(), inputs, labels, source="cli", target=file)
    sizes = ", ".join(f"{n}: {t:.1f}" for n, t in reference.thresholds)
    click.echo(f"Reference of {len(reference.classes)} classes stored; ADD thresholds by account size: {sizes}")


@modelguard_cli.command("evaluate")
@click.option("--scenario", "scenario", default="default", show_default=True,
              help="A bundled scenario name (default, small) or a JSON/YAML file.")
@click.option("--out", default="modelguard-report", show_default=True, type=click.Path(file_okay=False),
              help="Directory of report.json, report.md and the plots.")
@click.option("--seed", type=int, default=None, help="Seed of the simulation (default: the scenario's).")
@click.option("--mode", "modes", multiple=True, type=click.Choice(["off", "shadow", "default"]),
              help="Guard modes to run (default: the scenario's; repeat the option for several).")
@click.option("--no-plots", is_flag=True, help="Write no PNG plots.")
@click.option("--lofo", is_flag=True, default=None,
              help="Also measure the supervised detectors leave-one-family-out (default: the scenario's).")
@_friendly
def evaluate(scenario: str, out: str, seed: int | None, modes: tuple[str, ...], no_plots: bool,
             lofo: bool | None) -> None:
    """Attack the scenario's served model with simulated benign users and
    thieves, with the guard off, in shadow mode and on; report detection,
    clone fidelity and benign utility."""
    from .evaluate import run

    progress, finish = progress_bars("guard")
    try:
        report = run(scenario, out=out, seed=seed, modes=list(modes) or None, plots=not no_plots,
                     progress=progress, lofo=lofo or None)
    finally:
        finish()
    click.echo(f"Report written to {out}/report.md (seed {report['scenario']['seed']}).")


@modelguard_cli.command("fit-detectors")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@with_appcontext
@_friendly
def fit_detectors(file: str) -> None:
    """Train the random forest and the stacked ensemble from FILE, a labelled
    set {"rows": [...], "labels": [...], "groups": [...]} such as the
    training.json that `flask modelguard evaluate --export-training` writes."""
    with open(file) as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("rows", "labels", "groups")):
        raise click.ClickException('FILE must hold {"rows": [...], "labels": [...], "groups": [...]}.')
    try:
        trained = _service().fit_detectors(_actor(), data, target=file)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    assert trained.supervised is not None and trained.ensemble is not None
    click.echo(f"Trained on {len(data['rows'])} evaluations of {trained.accounts} accounts "
               f"({trained.malicious_accounts} malicious): random forest threshold "
               f"{trained.supervised.threshold:.3f}, ensemble threshold {trained.ensemble.threshold:.3f} "
               f"(benign FPR {_guard_settings().ensemble_fpr:g} per account).")
    weights = ", ".join(f"{k} {v:+.2f}" for k, v in trained.ensemble.weights().items())
    click.echo(f"Ensemble weights (log1p evidence): {weights}")


@modelguard_cli.command("calibrate")
@click.option("--reference", "reference", type=click.Path(exists=True, dir_okay=False),
              help="Known-good inputs and labels (.npz or .json) the simulated benign users draw from "
                   "(default: MODELGUARD_REFERENCE).")
@click.option("--route", help="The protected route to attack (default: the app's only one).")
@click.option("--benign", type=int, default=40, show_default=True, help="Simulated benign users per simulation.")
@click.option("--budget", type=int, default=300, show_default=True, help="Queries per simulated thief.")
@click.option("--families", help="Comma-separated thief families to simulate (default: every one).")
@click.option("--seed", type=int, default=0, show_default=True)
@with_appcontext
@_friendly
def calibrate(reference: str | None, route: str | None, benign: int, budget: int, families: str | None,
              seed: int) -> None:
    """Train the random forest and the stacked ensemble on this app's own
    model: simulated benign users and one thief of every family attack a
    sandboxed copy of the protected route; the trained set is stored, and
    every process of the app uses it from its worker's next tick."""
    from .calibration import FAMILIES
    from .reference_data import read_source

    chosen = tuple(f.strip() for f in families.split(",") if f.strip()) if families else FAMILIES
    unknown = sorted(set(chosen) - set(FAMILIES))
    if unknown:
        raise click.ClickException(f"Unknown thief families: {', '.join(unknown)} (known: {', '.join(FAMILIES)})")
    inputs = labels = None
    if reference is not None:
        try:
            inputs, labels = read_source(reference)
        except InvalidValue as exc:
            raise click.ClickException(str(exc)) from None
    progress, finish = progress_bars("simulation")
    try:
        result = _service().calibrate(_actor(), inputs=inputs, labels=labels, route=route, benign=benign,
                                      budget=budget, families=chosen, seed=seed, progress=progress)
    finally:
        finish()
    echo_calibration(result)


def echo_calibration(result: Any) -> None:
    """What a calibration expects: queries to the first flag per thief family, benign flag rate."""
    click.echo(f"Calibrated in {result.seconds:.0f} s; on a second simulation (other users and thieves):")
    for family, queries in sorted(result.queries_to_flag.items()):
        click.echo(f"  {family:<20} {'not flagged' if queries is None else f'flagged at {queries} queries'}")
    click.echo(f"  benign accounts flagged: {result.benign_flagged} of {result.benign_accounts} "
               f"({100 * result.benign_flag_rate:.1f} %)")


def progress_bars(prefix: str) -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
    """A progress callback drawing one bar per named stage on stderr, and the function that ends them."""
    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            for other in bars.values():
                other.render_finish()
            bar = bars[stage] = click.progressbar(length=total, label=f"{prefix} {stage:<8}", file=sys.stderr)
            bar.__enter__()
        bar.update(done - bar.pos)

    def finish() -> None:
        for bar in bars.values():
            bar.render_finish()

    return progress, finish


def _guard_settings() -> Any:
    return state_of(current_app).settings


from .admin.cli import register as _register_admin_commands  # noqa: E402

_register_admin_commands(modelguard_cli, _friendly)
