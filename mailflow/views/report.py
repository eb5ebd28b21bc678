"""What the views show, as plain JSON-ready data: per-account counts (what the milters counted,
mailflow/sent.py) beside the limits' levels now (what the store's buckets and windows hold).

Hours are unix time // 3600 (UTC clock hours). "This hour" is the current clock hour; "the last
24 hours" the current one and the 23 before it. Counts reach the store within the milters' flush
interval (10 s), levels at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from mailflow.config import Config
from mailflow.ratelimit.bucket import seconds_until_fits
from mailflow.ratelimit.grants import Grant, active_grant, overlay, read_grants
from mailflow.ratelimit.limits import Limit
from mailflow.ratelimit.window import Window
from mailflow.settings import RatePolicy
from mailflow.store.base import Store
from mailflow.views.fields import HELD, RECIPIENTS, REFUSED, SENT, SOURCE

DAY_HOURS = 24
SEEN_HOURS = 48  # how far back "never seen" and near-limit look (the counts are kept 50 hours)
MAX_ACCOUNTS = 100_000  # near-limit reads at most this many accounts' levels, the most active first


def active_grants(store: Store, account: str) -> tuple[dict[str, Any], ...]:
    """The account's active grant (ratelimit/grants.py), JSON-ready, with a "text" line; or none."""
    _, grant = active_grant(store, account)
    if grant is None:
        return ()
    until = datetime.fromtimestamp(grant.until, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return ({"limits": grant.limits_text(), "until": until, "reason": grant.reason, "by": grant.by,
             "text": f"{grant.limits_text()} until {until}, by {grant.by}: {grant.reason}"},)


def policy_now(config: Config, store: Store, account: str,
               grants: Mapping[str, tuple[str, Grant]] | None = None) -> RatePolicy:
    """The limits that apply to `account` now: the config's, with an active grant laid over
    (`grants`: read_grants() once for many accounts)."""
    base = config.ratelimit.policy_for(account)
    if grants is None:
        grant = active_grant(store, account)[1]
    else:
        found = grants.get(account)
        grant = found[1] if found is not None and found[1].until > time.time() else None
    return overlay(base, grant) if grant is not None else base


def hours_back(now: float, hours: int) -> list[int]:
    """The current clock hour and the `hours - 1` before it, newest first."""
    current = int(now) // 3600
    return [current - back for back in range(hours)]


def since(hours: Sequence[int]) -> str:
    return datetime.fromtimestamp(min(hours) * 3600, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def summary(fields: Mapping[str, int]) -> dict[str, Any]:
    """One account's counts over some hours, as the views show them."""
    refused = {name[len(REFUSED):]: n for name, n in fields.items() if name.startswith(REFUSED)}
    sources = {name[len(SOURCE):]: n for name, n in fields.items() if name.startswith(SOURCE)}
    return {
        "messages": fields.get(SENT, 0),
        "recipients": fields.get(RECIPIENTS, 0),
        "refused": sum(refused.values()),
        "refused_by_reason": dict(sorted(refused.items(), key=lambda item: (-item[1], item[0]))),
        "held": fields.get(HELD, 0),
        "sources": dict(sorted(sources.items(), key=lambda item: (-item[1], item[0]))),
    }


def kind_text(limit: Limit) -> str:
    """What a limit's kind means, in the words an admin reads it."""
    if limit.sliding:
        return f"sliding window: at most {limit.count} in any {limit.period}"
    burst = f"up to {limit.capacity} at once"
    return (f"token bucket: an idle account may send {burst}, then {limit.count}/{limit.period} "
            f"(up to {limit.capacity + limit.count} in its first {limit.period})")


def limit_state(limit: Limit, level: float, unit: str) -> dict[str, Any]:
    """One limit now: how much of it is in use, what is left, when one more (message or
    recipient, as the account is charged) fits."""
    state: dict[str, Any] = {
        "limit": str(limit),
        "kind": "sliding_window" if limit.sliding else "token_bucket",
        "meaning": kind_text(limit),
        "capacity": limit.capacity,
        "in_use": round(float(level), 2),  # a bucket: spent, refilling; a window: counted in it
        "left": round(max(0.0, limit.capacity - float(level)), 2),
        "share": round(float(level) / limit.capacity, 4),
        "unit": unit,
        "next_fits_in_seconds": seconds_until_fits(level, 1, limit),
    }
    if limit.sliding:
        expiries = level.expiries if isinstance(level, Window) else ()
        state["empty_again_in_seconds"] = math.ceil(expiries[-1][0]) if expiries else 0
    else:
        state["empty_again_in_seconds"] = math.ceil(float(level) / limit.rate)
    return state


def status(config: Config, store: Store, account: str, now: float) -> dict[str, Any]:
    """`mailflow ratelimit status ACCOUNT`."""
    policy = policy_now(config, store, account)
    hour, day = hours_back(now, 1), hours_back(now, DAY_HOURS)
    this_hour = store.account_counts([account], hour).get(account, {})
    last_day = store.account_counts([account], day).get(account, {})
    seen = bool(last_day) or bool(store.account_counts([account], hours_back(now, SEEN_HOURS)[DAY_HOURS:]))
    levels = store.levels(account, policy.limits)
    limits = [limit_state(limit, level, policy.unit) for limit, level in zip(policy.limits, levels)]
    return {
        "account": account,
        "seen": seen or any(level > 0 for level in levels),
        "unit": policy.unit,
        "exempt": policy.exempt,
        "this_hour": {"since": since(hour), **summary(this_hour)},
        "last_24_hours": {"since": since(day), **summary(last_day)},
        "limits": limits,
        "next_fits_in_seconds": 0 if policy.exempt else max((s["next_fits_in_seconds"] for s in limits), default=0),
        "grants": list(active_grants(store, account)),
    }


def _worst(config: Config, store: Store, accounts: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Each account's limit states now (exempt accounts: none), in one batch of store reads."""
    grants = read_grants(store)  # one read for every account
    policies = {account: policy_now(config, store, account, grants) for account in accounts}
    limited = [account for account in accounts if not policies[account].exempt]
    levels = store.levels_of([(account, policies[account].limits) for account in limited])
    return {account: [limit_state(limit, level, policies[account].unit)
                      for limit, level in zip(policies[account].limits, found)]
            for account, found in zip(limited, levels)}


def top(config: Config, store: Store, hours: Sequence[int], n: int) -> list[dict[str, Any]]:
    """`mailflow top`: the `n` accounts that sent the most messages in `hours`."""
    active = store.active_accounts(hours)
    ranked = sorted(active, key=lambda account: (-active[account], account))[:n]
    counts = store.account_counts(ranked, hours)
    states = _worst(config, store, ranked)
    rows = []
    for account in ranked:
        row: dict[str, Any] = {"account": account, **summary(counts.get(account, {}))}
        row["source"] = "+".join(row["sources"]) or None
        worst = max(states.get(account, []), key=lambda state: state["share"], default=None)
        row["limit_share"] = worst["share"] if worst else None  # None: exempt
        row["limit"] = worst["limit"] if worst else None
        rows.append(row)
    return rows


def near_limit(config: Config, store: Store, over: float, now: float) -> tuple[list[dict[str, Any]], int]:
    """`mailflow near-limit`: every limit of an account active in the last SEEN_HOURS that is at
    least `over` (a share, 0.8) used now, most used first; and how many accounts were looked at."""
    active = store.active_accounts(hours_back(now, SEEN_HOURS))
    accounts = sorted(active, key=lambda account: (-active[account], account))[:MAX_ACCOUNTS]
    rows = [{"account": account, **state}
            for account, states in _worst(config, store, accounts).items()
            for state in states if state["share"] >= over - 1e-9]
    rows.sort(key=lambda row: (-row["share"], row["account"], row["limit"]))
    return rows, len(accounts)
