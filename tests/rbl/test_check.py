"""`mailflow rbl check` verdicts against the loopback zones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from mailflow.rbl.watch import CRITICAL, OK, UNKNOWN, WARNING, nagios_state, run_poll
from tests.rbl.conftest import ZEN_CODES, rbl_settings

REPO = Path(__file__).resolve().parents[2]


def statuses(server: Any, ips: list[str], zones: list[str] | None = None) -> dict[tuple[str, str], Any]:
    result = run_poll(rbl_settings(server, ips, zones))
    return {(o.ip, o.zone.name): o for o in result.observations}


@pytest.mark.parametrize("last, codes", [("2", ("127.0.0.2",)), ("3", ("127.0.0.3",)), ("4", ("127.0.0.4",)),
                                         ("9", ("127.0.0.2", "127.0.0.9")), ("10", ("127.0.0.10",)), ("11", ("127.0.0.11",))])
def test_each_zen_code_is_a_listing_with_its_meaning_and_reason(dns: Any, last: str, codes: tuple[str, ...]) -> None:
    obs = statuses(dns, [f"192.0.2.{last}"])[(f"192.0.2.{last}", "zen.test")]
    assert obs.status == "listed" and obs.codes == codes
    assert obs.meanings == tuple(ZEN_CODES[c] for c in codes)
    assert obs.detail == f"listed, see https://check.test/192.0.2.{last}"


@pytest.mark.parametrize("ip, status, detail", [
    ("192.0.2.20", "clean", ""),
    ("192.0.2.254", "error", "127.255.255.254: query through a public or open resolver"),
    ("192.0.2.99", "error", "127.0.0.99 is not one of zen.test's listing codes"),
    ("192.0.2.98", "error", "10.0.0.1 is not one of zen.test's listing codes"),
    ("192.0.2.30", "unknown", "timed out"),
    ("192.0.2.31", "unknown", "no usable answer (SERVFAIL or REFUSED)"),
])
def test_errors_and_silence_are_never_clean_or_listed(dns: Any, ip: str, status: str, detail: str) -> None:
    obs = statuses(dns, [ip])[(ip, "zen.test")]
    assert obs.status == status and obs.detail.startswith(detail)


def test_ipv6_listing_uses_32_reversed_nibbles(dns: Any) -> None:
    obs = statuses(dns, ["2001:db8::25"])[("2001:db8::25", "zen.test")]
    assert obs.status == "listed" and obs.detail == "IPv6 listing"


def test_a_zone_that_lists_the_world_is_blind_and_not_trusted(dns: Any) -> None:
    result = run_poll(rbl_settings(dns, ["192.0.2.20"], ["dead.test", "broken.test"]))
    health = {z.zone.name: z for z in result.zones}
    assert health["dead.test"].blind and "127.0.0.1 must not be listed" in health["dead.test"].detail
    assert health["broken.test"].blind and "127.0.0.2 must be listed" in health["broken.test"].detail
    assert not health["zen.test"].blind
    by_zone = {o.zone.name: o.status for o in result.observations}
    assert by_zone == {"zen.test": "clean", "dead.test": "untrusted", "broken.test": "untrusted"}
    assert nagios_state(result) == UNKNOWN


@pytest.mark.parametrize("ips, state", [
    (["192.0.2.20"], OK),
    (["192.0.2.20", "192.0.2.254"], WARNING),
    (["192.0.2.20", "192.0.2.30"], UNKNOWN),
    (["192.0.2.2", "192.0.2.30", "192.0.2.254"], CRITICAL),  # CRITICAL wins over UNKNOWN and WARNING
])
def test_nagios_states(dns: Any, ips: list[str], state: int) -> None:
    assert nagios_state(run_poll(rbl_settings(dns, ips))) == state


def _config_file(tmp_path: Path, dns: Any, ips: list[str]) -> Path:
    path = tmp_path / "rbl.toml"
    path.write_text(tomli_w.dumps({"rbl": {
        "ips": ips, "nameservers": [f"127.0.0.1:{dns.server_address[1]}"], "timeout_ms": 500, "use_default_zones": False,
        "zones": [{"name": "zen.test", "codes": ZEN_CODES, "delist_url": "https://check.test/"}]}}))
    return path


def test_the_cli_prints_a_nagios_line_a_table_and_json(dns: Any, tmp_path: Path) -> None:
    cfg = _config_file(tmp_path, dns, ["192.0.2.2", "192.0.2.20"])
    run = lambda *a: subprocess.run([sys.executable, "-m", "mailflow", "rbl", "check", "-c", str(cfg), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=60, cwd=REPO, env=os.environ)
    text = run()
    assert text.returncode == CRITICAL
    first, *rows = text.stdout.splitlines()
    assert first.startswith("RBL CRITICAL - listed: 192.0.2.2 on zen.test | listed=1;;1 clean=1 ")
    assert any("192.0.2.2" in r and "listed" in r and "127.0.0.2 SBL" in r and "delist: https://check.test/" in r for r in rows)
    machine = run("--json")
    records = json.loads(machine.stdout)["records"]
    assert machine.returncode == CRITICAL
    assert {(r["ip"], r["status"]) for r in records} == {("192.0.2.2", "listed"), ("192.0.2.20", "clean")}
