"""``flask modelguard worker``: judge the query events every serving process
publishes (``MODELGUARD_EVENTS = "redis://..."``), off the serving processes."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext

from ..runtime import state_of
from .base import _friendly, modelguard_cli


@modelguard_cli.command("worker")
@click.option("--consumer", help="Name in the consumer group (default: this host's name; a restarted worker "
                                 "with the same name takes up what it had read).")
@click.option("--max-events", type=int, help="Stop after this many events (default: run until SIGTERM or Ctrl-C).")
@with_appcontext
@_friendly
def worker(consumer: str | None, max_events: int | None) -> None:
    """Read the query-event stream: account states, detectors, flags, the query log."""
    state = state_of(current_app)
    stop = threading.Event()
    _stop_on_signals(stop)
    logging.getLogger("flask_modelguard").setLevel(logging.INFO)
    click.echo(f"modelguard worker: reading {state.settings.events} (stream {state.settings.namespace}:events); "
               "Ctrl-C to stop", err=True)
    read = state.consume(stop, consumer=consumer, limit=max_events)
    stats = state.stats()
    click.echo(f"modelguard worker: {read} events read, {stats['written']} written, {stats['dropped']} dropped",
               err=True)


def _stop_on_signals(stop: threading.Event) -> None:
    def handle(signum: int, frame: Any) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handle)
