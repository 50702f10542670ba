"""What the group detector found in a run: per actor with several accounts,
how many were flagged as members of a colluding group; and the false group
rate, benign accounts flagged as members of one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: How a group verdict's reason begins (detectors/groups.py).
GROUP_REASON = "colluding group of"


def _grouped(account: Mapping[str, Any]) -> bool:
    return any(str(reason).startswith(GROUP_REASON) for reason in account.get("reasons") or [])


def group_metrics(run: Mapping[str, Any]) -> dict[str, Any]:
    """``{"actors": [{actor, kind, accounts, grouped, flagged}], "benign_accounts",
    "benign_grouped", "benign_grouped_rate"}``: actors of several accounts only;
    an account counts as grouped when its first flag was a group's."""
    accounts = list(run.get("accounts", []))
    actors: dict[str, list[Mapping[str, Any]]] = {}
    for a in accounts:
        actors.setdefault(str(a.get("actor") or a.get("name")), []).append(a)
    rows = [{"actor": name, "kind": str(found[0].get("kind", "")), "accounts": len(found),
             "grouped": sum(_grouped(a) for a in found), "flagged": sum(bool(a.get("flagged")) for a in found)}
            for name, found in actors.items() if len(found) > 1 and any(a.get("malicious") for a in found)]
    benign = [a for a in accounts if not a.get("malicious")]
    grouped = sum(_grouped(a) for a in benign)
    return {"actors": rows, "benign_accounts": len(benign), "benign_grouped": grouped,
            "benign_grouped_rate": grouped / len(benign) if benign else float("nan")}
