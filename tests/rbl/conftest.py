"""Test zones served on loopback; no test ever asks a real DNSBL.

The same zone data is served two ways: by the loopback stub (tests/helpers/dns_server.py), whose
records a test can change and which can also time out or SERVFAIL, and by Debian's rbldnsd from
real zone files (tests/helpers/rbldnsd.py). Tests that fit both take the `dnsbl` fixture, which
runs them against each; tests that change records or need silence take the stub (`dns`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from mailflow.config import RblSettings, parse_config
from tests.helpers.dns_server import dns_server
from tests.helpers.rbldnsd import rbldnsd, rbldnsd_available

REPO = Path(__file__).resolve().parents[2]
ZEN_CODES = {"127.0.0.2": "SBL", "127.0.0.3": "CSS", "127.0.0.4": "XBL", "127.0.0.9": "DROP",
             "127.0.0.10": "PBL ISP", "127.0.0.11": "PBL Spamhaus"}

# zen.test behaves like Spamhaus ZEN (its test point answers several codes): address -> (A
# answers, TXT template). As in rbldnsd's zone files, `$` in the TXT stands for the address.
ZEN: dict[str, tuple[list[str], str]] = {
    "127.0.0.2": (["127.0.0.2", "127.0.0.4", "127.0.0.10"], "test point"),
    **{f"192.0.2.{last}": (answers, "listed, see https://check.test/$")
       for last, answers in {"2": ["127.0.0.2"], "3": ["127.0.0.3"], "4": ["127.0.0.4"], "9": ["127.0.0.2", "127.0.0.9"],
                             "10": ["127.0.0.10"], "11": ["127.0.0.11"]}.items()},
    "192.0.2.254": (["127.255.255.254"], ""),
    "192.0.2.99": (["127.0.0.99"], ""),
    "192.0.2.98": (["10.0.0.1"], ""),
    "2001:db8::25": (["127.0.0.2"], "IPv6 listing"),
}


def rev(ip: str, zone: str) -> str:
    from mailflow.rbl.zones import Zone

    return Zone(zone, {}).query_name(ip).lower()


def healthy(server: Any, zone: str, test_answer: list[str] | None = None) -> None:
    server.records[rev("127.0.0.2", zone)] = {"A": test_answer or ["127.0.0.2"], "TXT": ["test point"]}


def zone_files(zone: str, entries: dict[str, tuple[list[str], str]]) -> list[tuple[str, str, str]]:
    """rbldnsd datasets for `entries`: ip4set for IPv4, ip6trie for IPv6, one dataset per answer
    position (rbldnsd combines the datasets of a zone into one answer, as ZEN does), the TXT in
    the first only (`:A:` with nothing after the second colon: no TXT). For instance
    `192.0.2.4 :4:listed, see https://check.test/$`."""
    datasets = []
    for kind, is_v6 in (("ip4set", False), ("ip6trie", True)):
        layers: list[list[str]] = []
        for ip, (answers, txt) in entries.items():
            if (":" in ip) != is_v6:
                continue
            for n, answer in enumerate(answers):
                if n == len(layers):
                    layers.append([])
                code = answer.removeprefix("127.0.0.")  # rbldnsd's short form: :4: is 127.0.0.4
                layers[n].append(f"{ip} :{code}:{txt if n == 0 else ''}")
        datasets += [(zone, kind, "\n".join(lines) + "\n") for lines in layers]
    return datasets


@pytest.fixture
def dns() -> Iterator[Any]:
    with dns_server() as server:
        for ip, (answers, txt) in ZEN.items():
            server.records[rev(ip, "zen.test")] = {"A": answers, **({"TXT": [txt.replace("$", ip)]} if txt else {})}
        server.records[rev("192.0.2.30", "zen.test")] = {"A": "DROP"}
        server.records[rev("192.0.2.31", "zen.test")] = {"A": "SERVFAIL"}
        # dead.test lists the whole world, test points included: it must be found blind.
        server.wildcards["dead.test"] = {"A": ["127.0.0.2"]}
        # broken.test answers nothing at all (a resolver that is blocked).
        server.wildcards["broken.test"] = {"A": "SERVFAIL"}
        yield server


@pytest.fixture(params=["stub", "rbldnsd"])
def dnsbl(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The same zones from the stub and from rbldnsd; `.server_address` is where to ask."""
    if request.param == "stub":
        yield request.getfixturevalue("dns")
        return
    if not rbldnsd_available():
        pytest.skip("rbldnsd is not installed (scripts/bootstrap.sh installs Debian's)")
    datasets = zone_files("zen.test", ZEN)
    datasets.append(("dead.test", "ip4set", "0.0.0.0/1 :2:\n128.0.0.0/1 :2:\n"))  # lists the world
    datasets.append(("broken.test", "ip4set", "# lists nothing, not even its test point\n"))
    with rbldnsd(datasets) as server:
        yield server


def rbl_settings(server: Any, ips: list[str], zones: list[str] | None = None, **extra: Any) -> RblSettings:
    zone_tables = [{"name": "zen.test", "codes": ZEN_CODES, "delist_url": "https://check.test/", "ipv6": True}]
    zone_tables += [{"name": z, "codes": {"127.0.0.2": "listed"}} for z in (zones or [])]
    alerts = extra.pop("alerts", {})
    config = parse_config({"rbl": {
        "ips": ips, "nameservers": [f"127.0.0.1:{server.server_address[1]}"], "timeout_ms": 500,
        "use_default_zones": False, "zones": zone_tables, "alerts": alerts, **extra}})
    return config.rbl


def config_file(tmp_path: Path, server: Any, ips: list[str], **rbl: Any) -> Path:
    """A config file for the CLI: zen.test only, IPv4 only."""
    path = tmp_path / "rbl.toml"
    path.write_text(tomli_w.dumps({"rbl": {
        "ips": ips, "nameservers": [f"127.0.0.1:{server.server_address[1]}"], "timeout_ms": 500, "use_default_zones": False,
        "zones": [{"name": "zen.test", "codes": ZEN_CODES, "delist_url": "https://check.test/"}], **rbl}}))
    return path


def run_mailflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailflow", *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env=os.environ)
