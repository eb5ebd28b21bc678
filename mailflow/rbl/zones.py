"""DNSBL zones: their listing codes, and how to ask them.

A listing is an A record inside 127.0.0.0/8 *and* in the zone's documented code set.
127.255.255.0/24 is Spamhaus' error range (.252 typo in the zone, .254 query through a public
or open resolver, .255 excessive queries): an error, never a listing. Zones known dead (SORBS,
AHBL, NJABL, spamcannibal) are not shipped: dead zones have listed the whole Internet.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import dns.reversename

LOOPBACK_NET = ipaddress.ip_network("127.0.0.0/8")
ERROR_NET = ipaddress.ip_network("127.255.255.0/24")
ERROR_MEANINGS = {
    "127.255.255.252": "typo in the DNSBL zone name",
    "127.255.255.254": "query through a public or open resolver (or unattributable reverse DNS): the checker is blind",
    "127.255.255.255": "excessive number of queries",
}


@dataclass(frozen=True)
class Zone:
    name: str  # what is queried, e.g. zen.spamhaus.org or KEY.zen.dq.spamhaus.net
    codes: Mapping[str, str]  # answer -> meaning
    delist_url: str = ""
    ipv6: bool = False  # does the zone list IPv6 addresses?
    note: str = ""
    label: str = ""  # shown instead of name (hides a DQS key)

    @property
    def shown(self) -> str:
        return self.label or self.name

    def query_name(self, ip: str) -> str:
        """Reversed octets (IPv4) or 32 reversed nibbles (IPv6), then the zone."""
        reverse = dns.reversename.from_address(ip)
        origin = dns.reversename.ipv6_reverse_domain if ":" in ip else dns.reversename.ipv4_reverse_domain
        return reverse.relativize(origin).to_text() + "." + self.name.rstrip(".")

    def applies_to(self, ip: str) -> bool:
        return self.ipv6 or ":" not in ip


def _spamhaus_zen(dqs_key: str = "") -> Zone:
    return Zone(
        name=f"{dqs_key}.zen.dq.spamhaus.net" if dqs_key else "zen.spamhaus.org",
        label="zen.spamhaus.org (DQS)" if dqs_key else "",
        codes={
            "127.0.0.2": "SBL: Spamhaus Block List, direct spam source",
            "127.0.0.3": "CSS: snowshoe spam source",
            "127.0.0.4": "XBL: exploited or infected host (CBL)",
            "127.0.0.9": "DROP: hijacked or criminal netblock",
            "127.0.0.10": "PBL: ISP-maintained policy block (should not send direct-to-MX)",
            "127.0.0.11": "PBL: Spamhaus-maintained policy block",
        },
        delist_url="https://check.spamhaus.org/",
        ipv6=True,
        note="free use is non-commercial and low volume only; providers use a DQS key (rbl.spamhaus_dqs_key)",
    )


def default_zones(spamhaus_dqs_key: str = "") -> list[Zone]:
    return [
        _spamhaus_zen(spamhaus_dqs_key),
        Zone("bl.spamcop.net", {"127.0.0.2": "SpamCop: reported as a spam source"},
             "https://www.spamcop.net/bl.shtml"),
        Zone("b.barracudacentral.org", {"127.0.0.2": "Barracuda Reputation Block List"},
             "https://www.barracudacentral.org/rbl/removal-request",
             note="answers only resolvers whose IPs are registered at barracudacentral.org; unregistered it shows as blind"),
        Zone("psbl.surriel.com", {"127.0.0.2": "PSBL: hit spam traps"}, "https://psbl.org/remove"),
        Zone("bl.mailspike.net", {"127.0.0.2": "Mailspike: listed for spam"}, "https://mailspike.io/"),
        Zone("ix.dnsbl.manitu.net", {"127.0.0.2": "NiX Spam: hit spam traps"}, "https://www.nixspam.net/"),
    ]


@dataclass(frozen=True)
class Answer:
    """What one query's A records mean under a zone's rules."""

    kind: str  # listed | clean | error
    codes: tuple[str, ...] = ()
    meanings: tuple[str, ...] = ()
    detail: str = ""


def judge_answer(zone: Zone, addresses: list[str]) -> Answer:
    """Every A record counts; one answer outside the rules makes the whole answer an error."""
    if not addresses:
        return Answer("clean")
    codes, meanings = [], []
    for text in sorted(addresses, key=lambda a: (len(a), a)):  # record order varies between answers
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return Answer("error", detail=f"answer {text!r} is not an IPv4 address")
        if address in ERROR_NET:
            return Answer("error", detail=f"{text}: {ERROR_MEANINGS.get(text, 'DNSBL error code')}")
        if address not in LOOPBACK_NET or text not in zone.codes:
            return Answer("error", detail=f"{text} is not one of {zone.shown}'s listing codes")
        codes.append(text)
        meanings.append(zone.codes[text])
    return Answer("listed", tuple(codes), tuple(meanings))


def unwatched(ips: Sequence[str], zones: Sequence[Zone]) -> list[str]:
    """The IPs no zone can check (an IPv6 address with only IPv4 zones): never to be read as clean."""
    return [ip for ip in ips if not any(zone.applies_to(ip) for zone in zones)]


def why_unwatched(ip: str, zones: Sequence[Zone]) -> str:
    if not zones:
        return "no zone is configured"
    version = ipaddress.ip_address(ip).version
    hint = "; set ipv6 = true on a [[rbl.zones]] entry that lists IPv6" if version == 6 else ""
    return f"no configured zone lists IPv{version} addresses{hint}"


def unwatched_summary(ips: Sequence[str], zones: Sequence[Zone], shown: int = 10) -> str:
    """One bounded line naming the unwatched IPs and why, or "" when every IP is watched."""
    gaps = unwatched(ips, zones)
    if not gaps:
        return ""
    by_reason: dict[str, list[str]] = {}
    for ip in gaps:
        by_reason.setdefault(why_unwatched(ip, zones), []).append(ip)
    parts = []
    for reason, group in by_reason.items():
        more = f" and {len(group) - shown} more" if len(group) > shown else ""
        parts.append(f"{', '.join(group[:shown])}{more} ({reason})")
    return f"{len(gaps)} outbound IP(s) not checked by any DNSBL zone: " + "; ".join(parts)


def merge_zones(defaults: list[Zone], configured: list[Zone]) -> list[Zone]:
    """Configured zones add to the defaults, or replace the default of the same name."""
    by_name = {zone.name: zone for zone in defaults}
    for zone in configured:
        by_name[zone.name] = zone
    return list(by_name.values())


def expand_ips(entries: list[str], limit: int = 4096) -> list[str]:
    """Every address of the configured IPs and CIDRs (all of them: outbound pools use them all)."""
    out: list[str] = []
    for entry in entries:
        network = ipaddress.ip_network(entry, strict=False)
        if len(out) + network.num_addresses > limit:
            raise ValueError(f"{entry}: more than {limit} addresses to watch; list the outbound IPs themselves")
        out += [str(ip) for ip in network]
    return list(dict.fromkeys(out))
