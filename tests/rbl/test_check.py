"""`mailflow rbl check` verdicts against the loopback zones: the stub and rbldnsd (`dnsbl`), or the
stub alone (`dns`) where a query must time out or SERVFAIL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from mailflow.rbl.watch import CRITICAL, OK, UNKNOWN, WARNING, nagios_state, run_poll
from tests.rbl.conftest import ZEN_CODES, config_file, rbl_settings, run_mailflow


def statuses(server: Any, ips: list[str], zones: list[str] | None = None) -> dict[tuple[str, str], Any]:
    result = run_poll(rbl_settings(server, ips, zones))
    return {(o.ip, o.zone.name): o for o in result.observations}


@pytest.mark.parametrize("last, codes", [("2", ("127.0.0.2",)), ("3", ("127.0.0.3",)), ("4", ("127.0.0.4",)),
                                         ("9", ("127.0.0.2", "127.0.0.9")), ("10", ("127.0.0.10",)), ("11", ("127.0.0.11",))])
def test_each_zen_code_is_a_listing_with_its_meaning_and_reason(dnsbl: Any, last: str, codes: tuple[str, ...]) -> None:
    obs = statuses(dnsbl, [f"192.0.2.{last}"])[(f"192.0.2.{last}", "zen.test")]
    assert obs.status == "listed" and obs.codes == codes
    assert obs.meanings == tuple(ZEN_CODES[c] for c in codes)
    assert obs.detail == f"listed, see https://check.test/192.0.2.{last}"


@pytest.mark.parametrize("ip, status, detail", [
    ("192.0.2.20", "clean", ""),
    ("192.0.2.254", "error", "127.255.255.254: query through a public or open resolver"),
    ("192.0.2.99", "error", "127.0.0.99 is not one of zen.test's listing codes"),
    ("192.0.2.98", "error", "10.0.0.1 is not one of zen.test's listing codes"),
])
def test_error_answers_are_never_clean_or_listed(dnsbl: Any, ip: str, status: str, detail: str) -> None:
    obs = statuses(dnsbl, [ip])[(ip, "zen.test")]
    assert obs.status == status and obs.detail.startswith(detail)


@pytest.mark.parametrize("ip, detail", [("192.0.2.30", "timed out"), ("192.0.2.31", "no usable answer (SERVFAIL or REFUSED)")])
def test_silence_is_unknown_never_clean(dns: Any, ip: str, detail: str) -> None:
    obs = statuses(dns, [ip])[(ip, "zen.test")]
    assert obs.status == "unknown" and obs.detail.startswith(detail)


def test_ipv6_listing_uses_32_reversed_nibbles(dnsbl: Any) -> None:
    obs = statuses(dnsbl, ["2001:db8::25", "2001:db8::26"])
    assert obs[("2001:db8::25", "zen.test")].status == "listed" and obs[("2001:db8::25", "zen.test")].detail == "IPv6 listing"
    assert obs[("2001:db8::26", "zen.test")].status == "clean"


def test_a_zone_that_lists_the_world_is_blind_and_not_trusted(dnsbl: Any) -> None:
    result = run_poll(rbl_settings(dnsbl, ["192.0.2.20"], ["dead.test", "broken.test"]))
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
    (["192.0.2.2", "192.0.2.254"], CRITICAL),
])
def test_nagios_states(dnsbl: Any, ips: list[str], state: int) -> None:
    assert nagios_state(run_poll(rbl_settings(dnsbl, ips))) == state


@pytest.mark.parametrize("ips, state", [
    (["192.0.2.20", "192.0.2.30"], UNKNOWN),
    (["192.0.2.2", "192.0.2.30", "192.0.2.254"], CRITICAL),  # CRITICAL wins over UNKNOWN and WARNING
])
def test_nagios_states_when_a_query_goes_unanswered(dns: Any, ips: list[str], state: int) -> None:
    assert nagios_state(run_poll(rbl_settings(dns, ips))) == state


def test_the_cli_prints_a_nagios_line_a_table_and_json(dnsbl: Any, tmp_path: Path) -> None:
    cfg = config_file(tmp_path, dnsbl, ["192.0.2.2", "192.0.2.20"])
    run = lambda *a: run_mailflow("rbl", "check", "-c", str(cfg), *a)  # noqa: E731
    text = run()
    assert text.returncode == CRITICAL
    first, *rows = text.stdout.splitlines()
    assert first.startswith("RBL CRITICAL - listed: 192.0.2.2 on zen.test | listed=1;;1 clean=1 ")
    assert any("192.0.2.2" in r and "listed" in r and "127.0.0.2 SBL" in r and "delist: https://check.test/" in r for r in rows)
    machine = run("--json")
    records = json.loads(machine.stdout)["records"]
    assert machine.returncode == CRITICAL
    assert {(r["ip"], r["status"]) for r in records} == {("192.0.2.2", "listed"), ("192.0.2.20", "clean")}


# -- nothing watched silently: an IP that no configured zone can check --------------------------

V6 = "2001:db8::1"  # zen.test in config_file() has no `ipv6 = true`


def test_an_ip_no_zone_can_check_makes_rbl_check_unknown_and_named(dnsbl: Any, tmp_path: Path) -> None:
    cfg = config_file(tmp_path, dnsbl, ["192.0.2.20", V6])
    text = run_mailflow("rbl", "check", "-c", str(cfg))
    assert text.returncode == UNKNOWN, text.stdout + text.stderr
    first, *rows = text.stdout.splitlines()
    assert first.startswith(f"RBL UNKNOWN - 1 outbound IP(s) not checked by any DNSBL zone: {V6} "
                            "(no configured zone lists IPv6 addresses; set ipv6 = true")
    assert "unwatched=1" in first and "IPs clean" not in first
    assert any(r.split()[:3] == [V6, "(no", "zone)"] and "unwatched" in r for r in rows)
    assert any(r.startswith("192.0.2.20 ") and " clean " in r for r in rows)  # the rest is still checked
    machine = json.loads(run_mailflow("rbl", "check", "--json", "-c", str(cfg)).stdout)
    assert machine["state"] == "UNKNOWN" and [u["ip"] for u in machine["unwatched"]] == [V6]


def test_a_listing_stays_critical_beside_an_unwatched_ip(dnsbl: Any) -> None:
    result = run_poll(_v4_only(rbl_settings(dnsbl, ["192.0.2.2", V6])))
    assert result.unwatched == [V6] and nagios_state(result) == CRITICAL


def _v4_only(settings: Any) -> Any:
    from dataclasses import replace

    return replace(settings, zones=tuple(replace(z, ipv6=False) for z in settings.zones))


@pytest.mark.parametrize("ip, zones, reason", [
    (V6, [{"name": "zen.test", "codes": {"127.0.0.2": "SBL"}}], "no configured zone lists IPv6 addresses"),
    ("192.0.2.20", [], "no zone is configured"),
])
def test_check_config_warns_about_unwatched_ips_and_still_exits_0(tmp_path: Path, ip: str, zones: list[Any],
                                                                  reason: str) -> None:
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text(tomli_w.dumps({"store": {"url": f"sqlite://{tmp_path}/state.db"},
                                  "rbl": {"ips": ["192.0.2.1", ip], "use_default_zones": False, "zones": zones}}))
    text = run_mailflow("check-config", "-c", str(cfg))
    assert text.returncode == 0 and text.stdout.startswith(f"{cfg}: OK")
    [warning] = text.stderr.splitlines()
    assert warning.startswith("mailflow: warning: rbl: ") and ip in warning and reason in warning


def test_check_config_is_quiet_when_every_ip_is_watched(tmp_path: Path) -> None:
    cfg = tmp_path / "mailflow.toml"
    cfg.write_text(tomli_w.dumps({"store": {"url": f"sqlite://{tmp_path}/state.db"},
                                  "rbl": {"ips": ["192.0.2.1", V6]}}))  # the default zen.spamhaus.org lists IPv6
    text = run_mailflow("check-config", "-c", str(cfg))
    assert text.returncode == 0 and text.stderr == ""
