"""``flask modelguard``: canaries, watermarks and marks, the reference, evaluation, the
detectors' training and calibration."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click
from flask.cli import with_appcontext

from ..exc import InvalidValue
from ..ownership import DEFAULT_PROBES, DEFAULT_THRESHOLD_LOG2, file_suspect, http_suspect, verify
from .base import _actor, _friendly, _guard, _guard_settings, _service, modelguard_cli


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
@click.option("--max-probes", default=DEFAULT_PROBES, show_default=True)
@with_appcontext
@_friendly
def export_watermarks(account: str, out: Any, max_probes: int) -> None:
    """Write ACCOUNT's watermark inputs to OUT (JSON), to run a suspect model on offline."""
    records = _guard().watermark_records(account, max_probes)
    json.dump({"account": account, "fingerprints": [r["fingerprint"] for r in records],
               "inputs": [r["input"] for r in records]}, out)
    click.echo(f"{len(records)} watermark input(s) written.", err=True)


@modelguard_cli.command("export-evidence")
@click.argument("account")
@click.argument("out", type=click.File("w"))
@with_appcontext
@_friendly
def export_evidence(account: str, out: Any) -> None:
    """Write ACCOUNT's hash-chained watermark evidence to OUT (JSON); check it
    offline with ``python -m flask_modelguard.evidence OUT``."""
    found = _service().export_evidence(_actor(), account)
    json.dump(found, out, indent=1)
    out.write("\n")
    click.echo(f"{len(found['records'])} records of {account!r}; chain head {found['head']}")


@modelguard_cli.command("verify-watermark")
@click.argument("account", required=False)
@click.option("--url", help="Prediction API of the suspect model (takes {\"instances\": [...]}).")
@click.option("--header", "headers", multiple=True, help='Header for --url, "Name: value" (repeatable).')
@click.option("--predictions", type=click.Path(exists=True, dir_okay=False),
              help="The suspect's labels for the exported inputs (JSON list, or fingerprint → label).")
@click.option("--all", "all_accounts", is_flag=True, help="Test every account with watermarks (attribution; needs --url).")
@click.option("--max-probes", default=DEFAULT_PROBES, show_default=True)
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


@modelguard_cli.command("verify-mark")
@click.argument("owner", type=click.File())
@click.argument("suspect", type=click.File())
@click.option("--account", help="Test this account only (default: every account, p-values multiplied by their number).")
@click.option("--top", default=5, show_default=True, help="Print the most significant accounts only.")
@click.option("--threshold-log2", default=DEFAULT_THRESHOLD_LOG2, show_default=True, help="Claim when log2(p) is below.")
@with_appcontext
@_friendly
def verify_mark(owner: Any, suspect: Any, account: str | None, top: int, threshold_log2: float) -> None:
    """Test a suspect model's probabilities for an account's probability mark.
    OWNER and SUSPECT are JSON lists of probability vectors for the same probe
    inputs, in the same order: your model's own (unmarked) and the suspect's."""
    try:
        results = _guard().verify_probability_mark(json.load(owner), json.load(suspect), account,
                                                   threshold_log2=threshold_log2)
    except (TypeError, ValueError) as exc:  # not JSON, not numbers, ragged, or shapes that differ
        raise click.ClickException(f"Cannot test these answers: {exc}") from None
    for result in results[:top]:
        click.echo(result.summary())
    if not results:
        raise click.ClickException("No accounts to test.")


@modelguard_cli.command("fit-reference")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@with_appcontext
@_friendly
def fit_reference(file: str) -> None:
    """Fit ADD's reference from FILE: JSON {"inputs": [...], "labels": [...]}
    (model inputs as requests carry them, and the model's labels), or .npz with X and y."""
    from ..reference_data import read_source

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
    from ..evaluate import run

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
@click.option("--benign", type=int, default=40, show_default=True, help="Simulated benign users per simulation (plus twice as many short \"unseen\" ones).")
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
    from ..calibration import FAMILIES
    from ..reference_data import read_source

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
