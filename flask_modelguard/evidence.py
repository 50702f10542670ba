"""Evidence that holds in a dispute: each account's evidence records (its
watermark, poison and misinformation answers) form a hash chain (each record commits to the one before), exported as a bundle a
third party can check offline, with nothing of the server but this file.

A record's link is ``SHA-256(prev || canonical(record))`` in hex, ``prev``
the link before it (64 zeros for an account's first record), ``canonical``
the record's fields as compact JSON with sorted keys. A chain head published
at some time (a log line, an email, a notary) commits to every record before
it: a record changed, removed or slipped in later breaks every link after it.

    python -m flask_modelguard.evidence BUNDLE.json [--head HEX] [--labels SUSPECT.json]

checks the chain (and that it passes through ``--head``) and, given a
suspect's labels for the bundle's inputs, does the ownership test's
arithmetic. Framework-free; only the standard library and :mod:`.ownership`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .ownership import DEFAULT_THRESHOLD_LOG2, Verification, select_probes, verify

FORMAT = "modelguard-evidence/1"
GENESIS = "0" * 64
#: The fields of a record the chain commits to.
FIELDS = ("account_id", "route", "ts", "fingerprint", "input", "served_label", "model_label", "n_classes")
#: And those of records with a null rate (poison, misinformation, and watermarks written since 0006).
RATED_FIELDS = ("kind", "null_rate")


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes of a record a link hashes: its :data:`FIELDS` (and
    :data:`RATED_FIELDS` when it has a null rate) as compact, sorted JSON."""
    fields = {f: record[f] for f in FIELDS}
    fields["ts"] = float(fields["ts"])  # as the Float column gives it back, whatever clock wrote it
    if record.get("null_rate") is not None:
        fields["kind"] = str(record["kind"])
        fields["null_rate"] = float(record["null_rate"])
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def link(prev: str, record: dict[str, Any]) -> str:
    """The chain's link for ``record`` after ``prev``."""
    return hashlib.sha256(prev.encode() + canonical(record)).hexdigest()


def chain(records: Sequence[dict[str, Any]], prev: str = GENESIS) -> list[str]:
    """The links of ``records`` in order, after ``prev``."""
    out = []
    for record in records:
        prev = link(prev, record)
        out.append(prev)
    return out


def bundle(account: str, records: Sequence[dict[str, Any]], exported_at: str) -> dict[str, Any]:
    """An account's evidence for export: its records in order with their links, and the head."""
    kept = [{"id": r["id"], **{f: r[f] for f in FIELDS}, "kind": r.get("kind") or "watermark",
             "null_rate": r.get("null_rate"), "chain": r["chain"]} for r in records]
    return {"format": FORMAT, "account": account, "exported_at": exported_at, "records": kept,
            "head": kept[-1]["chain"] if kept else GENESIS,
            "hash": "sha256(prev_link_hex || json(record fields, sorted keys, compact)); first prev = 64 zeros",
            "fields": list(FIELDS), "rated_fields": list(RATED_FIELDS)}


@dataclass(frozen=True)
class ChainCheck:
    """What checking a bundle's chain found."""

    records: int
    #: Index of the first record whose link does not follow (None: all do).
    broken_at: int | None
    head: str
    #: Whether the chain passes through the head given to check (None: none given).
    has_head: bool | None = None

    @property
    def valid(self) -> bool:
        return self.broken_at is None and self.has_head is not False

    def summary(self) -> str:
        state = "valid" if self.broken_at is None else f"BROKEN at record {self.broken_at}"
        text = f"chain of {self.records} records {state}; head {self.head}"
        if self.has_head is not None:
            text += "; passes through the published head" if self.has_head else "; DOES NOT pass through the head"
        return text


def check(evidence: dict[str, Any], head: str | None = None) -> ChainCheck:
    """Recompute every link of a bundle; ``head``: a head published earlier
    that the chain must pass through."""
    if evidence.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} bundle")
    records = evidence["records"]
    prev, broken = GENESIS, None
    links = []
    for n, record in enumerate(records):
        prev = link(prev, record)
        links.append(prev)
        if broken is None and record.get("chain") != prev:
            broken = n
    if broken is None and evidence.get("head") != (links[-1] if links else GENESIS):
        broken = len(records)
    return ChainCheck(len(records), broken, links[-1] if links else GENESIS,
                      None if head is None else head in links)


def probes(evidence: dict[str, Any], limit: int | None = None) -> list[dict[str, Any]]:
    """The records the ownership test asks a suspect about (:func:`~.ownership.select_probes`)."""
    return select_probes(evidence["records"], limit)


def ownership_test(evidence: dict[str, Any], suspect_labels: Sequence[Any],
         threshold_log2: float = DEFAULT_THRESHOLD_LOG2) -> Verification:
    """The ownership test on a bundle: the suspect's labels for :func:`probes`' inputs, in order."""
    return verify(evidence["account"], probes(evidence), suspect_labels, threshold_log2=threshold_log2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flask_modelguard.evidence", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="the exported evidence (flask modelguard export-evidence)")
    parser.add_argument("--head", help="a chain head published earlier: the chain must pass through it")
    parser.add_argument("--labels", help="the suspect's labels for the bundle's probe inputs (a JSON list, in order)")
    parser.add_argument("--inputs", help="write the probe inputs to this file (run the suspect on them)")
    args = parser.parse_args(argv)
    with open(args.bundle) as fh:
        evidence = json.load(fh)
    found = check(evidence, args.head)
    print(found.summary())
    if args.inputs:
        with open(args.inputs, "w") as fh:
            json.dump([r["input"] for r in probes(evidence)], fh)
    if args.labels:
        with open(args.labels) as fh:
            print(ownership_test(evidence, json.load(fh)).summary())
    return 0 if found.valid else 1


if __name__ == "__main__":
    sys.exit(main())
