"""Test zones served from a loopback DNS server; no test ever asks a real DNSBL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from mailflow.config import RblSettings, parse_config
from tests.helpers.dns_server import dns_server

ZEN_CODES = {"127.0.0.2": "SBL", "127.0.0.3": "CSS", "127.0.0.4": "XBL", "127.0.0.9": "DROP",
             "127.0.0.10": "PBL ISP", "127.0.0.11": "PBL Spamhaus"}


def rev(ip: str, zone: str) -> str:
    from mailflow.rbl.zones import Zone

    return Zone(zone, {}).query_name(ip).lower()


def healthy(server: Any, zone: str, test_answer: list[str] | None = None) -> None:
    server.records[rev("127.0.0.2", zone)] = {"A": test_answer or ["127.0.0.2"], "TXT": ["test point"]}


@pytest.fixture
def dns() -> Iterator[Any]:
    with dns_server() as server:
        # zen.test behaves like Spamhaus ZEN (its test point answers several codes).
        healthy(server, "zen.test", ["127.0.0.2", "127.0.0.4", "127.0.0.10"])
        for last, answers in {"2": ["127.0.0.2"], "3": ["127.0.0.3"], "4": ["127.0.0.4"], "9": ["127.0.0.2", "127.0.0.9"],
                              "10": ["127.0.0.10"], "11": ["127.0.0.11"]}.items():
            server.records[rev(f"192.0.2.{last}", "zen.test")] = {"A": answers, "TXT": [f"listed, see https://check.test/192.0.2.{last}"]}
        server.records[rev("192.0.2.254", "zen.test")] = {"A": ["127.255.255.254"]}
        server.records[rev("192.0.2.99", "zen.test")] = {"A": ["127.0.0.99"]}
        server.records[rev("192.0.2.98", "zen.test")] = {"A": ["10.0.0.1"]}
        server.records[rev("192.0.2.30", "zen.test")] = {"A": "DROP"}
        server.records[rev("192.0.2.31", "zen.test")] = {"A": "SERVFAIL"}
        server.records[rev("2001:db8::25", "zen.test")] = {"A": ["127.0.0.2"], "TXT": ["IPv6 listing"]}
        # dead.test lists the whole world, test points included: it must be found blind.
        server.wildcards["dead.test"] = {"A": ["127.0.0.2"]}
        # broken.test answers nothing at all (a resolver that is blocked).
        server.wildcards["broken.test"] = {"A": "SERVFAIL"}
        yield server


def rbl_settings(server: Any, ips: list[str], zones: list[str] | None = None, **extra: Any) -> RblSettings:
    zone_tables = [{"name": "zen.test", "codes": ZEN_CODES, "delist_url": "https://check.test/", "ipv6": True}]
    zone_tables += [{"name": z, "codes": {"127.0.0.2": "listed"}} for z in (zones or [])]
    alerts = extra.pop("alerts", {})
    config = parse_config({"rbl": {
        "ips": ips, "nameservers": [f"127.0.0.1:{server.server_address[1]}"], "timeout_ms": 500,
        "use_default_zones": False, "zones": zone_tables, "alerts": alerts, **extra}})
    return config.rbl
