"""Ask the zones, with dnspython's asyncio resolver, at a bounded concurrency.

Every zone is self-tested each cycle (RFC 5782 section 5): 127.0.0.2 must be listed and
127.0.0.1 must not. A zone failing that is *blind* (dead and listing the world, or the resolver
is blocked) and none of its answers are trusted. A timeout or SERVFAIL is *unknown*, never clean.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from mailflow.rbl.zones import Answer, Zone, judge_answer, unwatched


@dataclass(frozen=True)
class Observation:
    ip: str
    zone: Zone
    status: str  # listed | clean | error | unknown | untrusted
    codes: tuple[str, ...] = ()
    meanings: tuple[str, ...] = ()
    detail: str = ""  # TXT reason for a listing, else what went wrong


@dataclass(frozen=True)
class ZoneHealth:
    zone: Zone
    blind: bool
    detail: str = ""


@dataclass
class Poll:
    observations: list[Observation] = field(default_factory=list)
    zones: list[ZoneHealth] = field(default_factory=list)
    queries: int = 0
    seconds: float = 0.0
    unwatched: list[str] = field(default_factory=list)  # IPs no configured zone can check


def make_resolver(nameservers: Sequence[tuple[str, int]], timeout: float) -> dns.asyncresolver.Resolver:
    """The system resolver, or the configured nameservers (host, port)."""
    resolver = dns.asyncresolver.Resolver(configure=not nameservers)
    if nameservers:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in nameservers]
    resolver.timeout = timeout
    resolver.lifetime = timeout
    resolver.cache = None  # a cached "listed" hides a delisting; polls must ask afresh
    return resolver


class Prober:
    def __init__(self, resolver: dns.asyncresolver.Resolver, concurrency: int) -> None:
        self.resolver = resolver
        self.slots = asyncio.Semaphore(concurrency)
        self.queries = 0

    async def lookup(self, zone: Zone, ip: str) -> tuple[str, Answer | None, str]:
        """('answer', Answer, '') or ('unknown', None, why)."""
        name = zone.query_name(ip)
        async with self.slots:
            self.queries += 1
            try:
                answer = await self.resolver.resolve(name, "A", raise_on_no_answer=False)
                return "answer", judge_answer(zone, [r.to_text() for r in answer]), ""
            except dns.resolver.NXDOMAIN:
                return "answer", judge_answer(zone, []), ""
            except dns.exception.Timeout:
                return "unknown", None, "timed out"
            except dns.resolver.NoNameservers as exc:  # SERVFAIL/REFUSED from every server
                return "unknown", None, f"no usable answer (SERVFAIL or REFUSED): {exc.__class__.__name__}"
            except dns.exception.DNSException as exc:
                return "unknown", None, f"{exc.__class__.__name__}: {exc}"

    async def reason(self, zone: Zone, ip: str) -> str:
        async with self.slots:
            self.queries += 1
            try:
                answer = await self.resolver.resolve(zone.query_name(ip), "TXT", raise_on_no_answer=False)
            except dns.exception.DNSException:
                return ""
            return " ".join(b"".join(r.strings).decode("utf-8", "replace") for r in answer)

    async def health(self, zone: Zone) -> ZoneHealth:
        _, listed, why = await self.lookup(zone, "127.0.0.2")
        if listed is None or listed.kind != "listed":
            detail = why or (listed.detail if listed and listed.detail else "not listed")
            return ZoneHealth(zone, True, f"self-test: 127.0.0.2 must be listed ({detail})")
        _, clean, why = await self.lookup(zone, "127.0.0.1")
        if clean is None:
            return ZoneHealth(zone, True, f"self-test: 127.0.0.1 unanswered ({why})")
        if clean.kind != "clean":
            shown = ", ".join(clean.codes) or clean.detail
            return ZoneHealth(zone, True, f"self-test: 127.0.0.1 must not be listed ({shown}); the zone lists everything")
        return ZoneHealth(zone, False)

    async def observe(self, zone: Zone, ip: str) -> Observation:
        _, answer, why = await self.lookup(zone, ip)
        if answer is None:
            return Observation(ip, zone, "unknown", detail=why)
        if answer.kind == "listed":
            return Observation(ip, zone, "listed", answer.codes, answer.meanings, await self.reason(zone, ip))
        return Observation(ip, zone, answer.kind, detail=answer.detail)


async def poll(ips: Sequence[str], zones: Sequence[Zone], resolver: dns.asyncresolver.Resolver,
               concurrency: int) -> Poll:
    """One cycle: self-test every zone, then ask every trusted zone about every IP of a family it lists."""
    started = time.monotonic()
    prober = Prober(resolver, concurrency)
    healths = await asyncio.gather(*(prober.health(zone) for zone in zones))
    trusted = [h.zone for h in healths if not h.blind]
    tasks = [prober.observe(zone, ip) for zone in trusted for ip in ips if zone.applies_to(ip)]
    observations = list(await asyncio.gather(*tasks))
    for health in healths:
        if health.blind:
            observations += [Observation(ip, health.zone, "untrusted", detail=health.detail)
                             for ip in ips if health.zone.applies_to(ip)]
    return Poll(observations, list(healths), prober.queries, time.monotonic() - started, unwatched(ips, zones))
