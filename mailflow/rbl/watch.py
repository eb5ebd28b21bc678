"""A poll cycle with state (the watcher) and without (the check), and how both are reported."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from mailflow.settings import RblSettings
from mailflow.log import log_decision
from mailflow.rbl.alerts import Alerter
from mailflow.rbl.query import Observation, Poll, make_resolver, poll
from mailflow.rbl.state import ip_step, zone_step
from mailflow.rbl.zones import unwatched_summary, why_unwatched
from mailflow.store.base import Store, StoreError

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAGIOS_WORDS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


def run_poll(settings: RblSettings) -> Poll:
    resolver = make_resolver(settings.nameservers, settings.timeout_ms / 1000)
    return asyncio.run(poll(settings.ips, settings.zones, resolver, settings.concurrency))


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def apply_cycle(settings: RblSettings, store: Store, alerter: Alerter, result: Poll, now: int) -> list[dict[str, Any]]:
    """Record one poll's news in the shared store; alert on transitions this watcher made."""
    alerts: list[dict[str, Any]] = []
    for health in result.zones:
        key = f"rbl:zone|{health.zone.name}"
        previous = store.state_get(key)
        step = zone_step(previous, health.blind, now)
        if step.new_state != previous and store.state_swap(key, previous, step.new_state) and step.alert:
            alerts.append({"event": step.alert, "zone": health.zone.shown, "detail": health.detail})
    for obs in result.observations:
        if obs.status not in ("listed", "clean"):
            continue
        key = f"rbl:{obs.ip}|{obs.zone.name}"
        previous = store.state_get(key)
        step = ip_step(previous, obs.status, now, settings.clean_polls_to_delist)
        if step.new_state == previous or not store.state_swap(key, previous, step.new_state) or not step.alert:
            continue  # nothing new, or another watcher on this store already made this transition
        alerts.append(_ip_alert(settings, store, obs, step.alert, now))
    for alert in alerts:
        alerter.send(alert)
    return alerts


def _ip_alert(settings: RblSettings, store: Store, obs: Observation, event: str, now: int) -> dict[str, Any]:
    alert: dict[str, Any] = {"event": event, "ip": obs.ip, "zone": obs.zone.shown, "at": _iso(now)}
    if event == "listed":
        hour = now // 3600
        try:
            suspects = store.top_senders([hour - 1, hour], settings.suspects) if settings.suspects else []
        except StoreError:
            suspects = []
        alert.update(codes=list(obs.codes), meanings=list(obs.meanings), reason=obs.detail,
                     delist_url=obs.zone.delist_url,
                     suspects=[{"account": account, "sent": sent} for account, sent in suspects])
    return alert


def watch(settings: RblSettings, store: Store, alerter: Alerter, cycles: int | None = None,
          polled: Callable[[Poll], None] | None = None) -> None:
    """Poll every `interval` seconds; `cycles` bounds the loop (tests, cron); `polled` sees each poll (metrics)."""
    gap = unwatched_summary(settings.ips, settings.zones)
    if gap:  # said at start and again in every cycle's summary: an unwatched IP never reads as clean
        log_decision(logging.WARNING, event="rbl_unwatched", detail=gap)
    done = 0
    while cycles is None or done < cycles:
        started = time.monotonic()
        result = run_poll(settings)
        apply_cycle(settings, store, alerter, result, int(time.time()))
        log_cycle(settings, result)
        if polled is not None:
            polled(result)
        done += 1
        if cycles is not None and done >= cycles:
            break
        time.sleep(max(0.0, settings.interval - (time.monotonic() - started)))


def log_cycle(settings: RblSettings, result: Poll) -> None:
    """One summary line per cycle; a warning while any IP is unwatched."""
    tally = counts(result)
    log_decision(logging.WARNING if result.unwatched else logging.INFO, event="rbl_cycle",
                 state=NAGIOS_WORDS[nagios_state(result)], ips=len(settings.ips), zones=len(result.zones),
                 **tally, blind_zones=sum(z.blind for z in result.zones), unwatched=len(result.unwatched),
                 queries=result.queries, seconds=round(result.seconds, 2),
                 detail=unwatched_summary(result.unwatched, settings.zones) or None)


# -- reporting a single poll ------------------------------------------------------------------


def nagios_state(result: Poll) -> int:
    """CRITICAL (listed) wins over UNKNOWN (blind zone, unanswered query, an IP no zone can
    check), UNKNOWN over WARNING (error answers such as 127.255.255.254), WARNING over OK."""
    statuses = {o.status for o in result.observations}
    if "listed" in statuses:
        return CRITICAL
    if "unknown" in statuses or any(z.blind for z in result.zones) or result.unwatched:
        return UNKNOWN
    if "error" in statuses:
        return WARNING
    return OK


def counts(result: Poll) -> dict[str, int]:
    tally = {status: 0 for status in ("listed", "clean", "error", "unknown", "untrusted")}
    for obs in result.observations:
        tally[obs.status] += 1
    return tally


def perfdata(result: Poll) -> str:
    tally = counts(result)
    blind = sum(z.blind for z in result.zones)
    return (f"listed={tally['listed']};;1 clean={tally['clean']} error={tally['error']} unknown={tally['unknown']} "
            f"blind_zones={blind} unwatched={len(result.unwatched)} queries={result.queries} time={result.seconds:.2f}s")


def status_line(result: Poll) -> str:
    state = nagios_state(result)
    listed = [f"{o.ip} on {o.zone.shown}" for o in result.observations if o.status == "listed"]
    blind = [z.zone.shown for z in result.zones if z.blind]
    parts = []
    if listed:
        parts.append("listed: " + ", ".join(listed))
    if blind:
        parts.append("blind zones: " + ", ".join(blind))
    if result.unwatched:
        parts.append(unwatched_summary(result.unwatched, [z.zone for z in result.zones]))
    tally = counts(result)
    if tally["unknown"]:
        parts.append(f"{tally['unknown']} queries unanswered")
    if tally["error"]:
        parts.append(f"{tally['error']} error answers")
    summary = "; ".join(parts) or f"{len({o.ip for o in result.observations})} IPs clean on {len(result.zones)} zones"
    return f"RBL {NAGIOS_WORDS[state]} - {summary} | {perfdata(result)}"


def table(result: Poll) -> str:
    rows = [f"{'IP':<40} {'ZONE':<28} {'STATUS':<10} DETAIL"]
    order = {"listed": 0, "unknown": 1, "untrusted": 2, "error": 3, "clean": 4}
    for obs in sorted(result.observations, key=lambda o: (order[o.status], o.ip, o.zone.shown)):
        detail = "; ".join(f"{c} {m}" for c, m in zip(obs.codes, obs.meanings))
        if obs.status == "listed" and obs.zone.delist_url:
            detail += f"; delist: {obs.zone.delist_url}"
        detail = "; ".join(x for x in (detail, obs.detail) if x)
        rows.append(f"{obs.ip:<40} {obs.zone.shown:<28} {obs.status:<10} {detail}")
    for zone in result.zones:
        if zone.blind:
            rows.append(f"{'(zone)':<40} {zone.zone.shown:<28} {'blind':<10} {zone.detail}")
    zones = [z.zone for z in result.zones]
    rows += [f"{ip:<40} {'(no zone)':<28} {'unwatched':<10} {why_unwatched(ip, zones)}" for ip in result.unwatched]
    return "\n".join(rows)


def as_json(result: Poll) -> str:
    return json.dumps({
        "state": NAGIOS_WORDS[nagios_state(result)],
        "records": [{"ip": o.ip, "zone": o.zone.shown, "status": o.status, "codes": list(o.codes),
                     "meanings": list(o.meanings), "detail": o.detail, "delist_url": o.zone.delist_url}
                    for o in result.observations],
        "zones": [{"zone": z.zone.shown, "blind": z.blind, "detail": z.detail} for z in result.zones],
        "unwatched": [{"ip": ip, "detail": why_unwatched(ip, [z.zone for z in result.zones])} for ip in result.unwatched],
        "queries": result.queries,
        "seconds": round(result.seconds, 3),
    }, indent=2)
