"""The views as text for a terminal (report.py gives the same data as JSON). Account names come
from logins and sender domains, so each is shown through model.shown: printable, bounded."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mailflow.model import shown


def duration(seconds: int) -> str:
    if seconds <= 0:
        return "now"
    if seconds < 120:
        return f"in {seconds} s"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"in {minutes} min ({seconds} s)"
    return f"in {minutes // 60} h {minutes % 60} min ({seconds} s)"


def _percent(share: float) -> str:
    """Rounded down: 99.6 % used is not shown as full."""
    return f"{math.floor(share * 100 + 1e-9)}%"


def _when(stamp: str) -> str:
    return stamp.replace("T", " ").replace(":00Z", " UTC")


def _reasons(counted: Mapping[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counted.items())


def _counts_line(what: str, counts: Mapping[str, Any]) -> str:
    refused = f"{counts['refused']} refused" + (f" ({_reasons(counts['refused_by_reason'])})" if counts["refused"] else "")
    return (f"  {what} (since {_when(counts['since'])}): {counts['messages']} messages sent to "
            f"{counts['recipients']} recipients, {refused}, {counts['held']} held")


def _limit_lines(state: Mapping[str, Any]) -> list[str]:
    unit = state["unit"]
    used = f"{state['in_use']:g} of {state['capacity']} {unit}s"
    empty = state["empty_again_in_seconds"]
    if state["kind"] == "token_bucket":
        used = f"in use {used}" + (f" (spent, refilling: full again {duration(empty)})" if empty else "")
    else:
        used = f"in the window {used}" + (f" (all out of it {duration(empty)})" if empty else "")
    return [f"  limit {state['limit']}: {state['meaning']}",
            f"    {used}; left {state['left']:g}; next {unit} fits {duration(state['next_fits_in_seconds'])}"]


def status(data: Mapping[str, Any]) -> list[str]:
    account = shown(data["account"])
    charged = "exempt from rate limits" if data["exempt"] else f"charged per {data['unit']}"
    lines = [f"account {account}: {charged}"]
    if not data["seen"]:
        lines.append(f"  never seen: no mail from {account} counted in the last 48 hours")
    lines += [_counts_line("this hour", data["this_hour"]), _counts_line("last 24 hours", data["last_24_hours"])]
    sources = data["last_24_hours"]["sources"]
    if sources:
        lines.append("  sources (last 24 hours): " + _reasons(sources))
    if not data["exempt"]:
        for state in data["limits"]:
            lines += _limit_lines(state)
        lines.append(f"  next {data['unit']} fits {duration(data['next_fits_in_seconds'])}")
    grants = data["grants"]
    lines.append("  grants: " + ("none" if not grants else "; ".join(str(grant.get("text", grant)) for grant in grants)))
    return lines


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(cell).rjust(widths[i]) if i in right else str(cell).ljust(widths[i])
                      for i, cell in enumerate(row)).rstrip() for row in [header, *rows]]


def top(rows: Sequence[Mapping[str, Any]], window: str, since: str) -> list[str]:
    title = f"accounts by messages sent, {window} (since {_when(since)}); limit used: the most used limit now"
    if not rows:
        return [title, "no mail counted"]
    body = [[shown(row["account"]), str(row["messages"]), str(row["recipients"]), str(row["refused"]), str(row["held"]),
             "exempt" if row["limit"] is None else f"{_percent(row['limit_share'])} of {row['limit']}",
             row["source"] or "-", _reasons(row["refused_by_reason"])] for row in rows]
    header = ["ACCOUNT", "MESSAGES", "RECIPIENTS", "REFUSED", "HELD", "LIMIT USED", "SOURCE", "REFUSED FOR"]
    return [title, *_table(header, body, {1, 2, 3, 4})]


def near_limit(rows: Sequence[Mapping[str, Any]], over: float, looked_at: int) -> list[str]:
    scope = f"{looked_at} accounts with mail in the last 48 hours looked at"
    if not rows:
        return [f"no limit is {over:g}% used or more ({scope})"]
    body = [[shown(row["account"]), row["limit"], f"{row['in_use']:g}/{row['capacity']}", _percent(row["share"]),
             duration(row["next_fits_in_seconds"])] for row in rows]
    return [f"limits {over:g}% used or more now ({scope})",
            *_table(["ACCOUNT", "LIMIT", "USED", "SHARE", "NEXT FITS"], body, {2, 3})]
