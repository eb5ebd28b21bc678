"""on_error = "local" with real parts: one redis-server this test owns, two milter processes
(`mailflow run`, the real milter protocol) sharing it, each with its own fallback file (two
hosts of a fleet). Redis dies (kill -9) or freezes (SIGSTOP) under load: mail keeps flowing,
every account stays within the README's worst case, a listed recipient is still deferred, and
once Redis is back each milter adds its local spend to Redis's buckets (checked in Redis)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailflow.config import load_config
from mailflow.milter.client import MilterClient
from mailflow.suppression.entries import Matcher, scope_for
from mailflow.suppression.keys import Keyring
from mailflow.suppression.normalize import AddressForms
from mailflow.store.redis import RedisStore, bucket_key
from tests.helpers.redis_faults import RedisProcess
from tests.helpers.servers import MilterProcess

LIMIT = 20  # per hour, a token bucket: each of the 2 milters gets 10 while Redis is down
TIMEOUT_MS = 200
LISTED = "gone@dest.example"


def _config(url: str, fallback: Path, fleet_size: int = 2) -> dict[str, object]:
    return {"store": {"url": url, "timeout_ms": TIMEOUT_MS, "refresh_ms": 200, "fleet_size": fleet_size,
                      "fallback_path": str(fallback)},
            "milter": {"on_error": "local"}, "accounts": {"identify": ["sasl"]},
            "ratelimit": {"limits": [f"{LIMIT}/hour"]}, "suppression": {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"}}


def _message(milter: MilterProcess, account: str, rcpt: str = "a@dest.example") -> str:
    """One message: "accepted", "store_error" (on_error's 451 4.3.0), "unconfirmed" (a listed
    recipient the fallback cannot check), "refused" (a rate limit) or "rejected" (5xx)."""
    auth = {"{auth_authen}": f"bob@{account}"}
    with MilterClient(milter.socket, timeout=10) as c:
        c.connect("mua.example", "198.51.100.20", 40000)
        c.helo("mua.example")
        steps: list[Callable[[], Any]] = [lambda: c.mail(f"bob@{account}", macros=auth), lambda: c.rcpt(rcpt),
                                          lambda: c.header("From", f"bob@{account}"), c.eoh,
                                          lambda: c.eom(macros={"i": "4ABCDEF"})]
        for step in steps:
            reply = step()
            if reply.action == "continue":
                continue
            if reply.smtp.startswith("5"):
                return "rejected"
            if "cannot be checked" in reply.smtp:
                return "unconfirmed"
            return "store_error" if reply.smtp.startswith("451 4.3.0") else "refused"
    return "accepted"


def _level(server: RedisProcess, account: str) -> float:
    with server.client() as admin:
        return float(admin.hget(bucket_key(account, "hour"), "level") or 0)


def _list_recipient(milter: MilterProcess, url: str, account: str) -> None:
    config = load_config(str(milter.config_path))
    forms = AddressForms(config.suppression.case_sensitive_local_part, config.suppression.strip_subaddress)
    entry = Matcher(forms, Keyring(config.suppression.secret)).make_entry(LISTED, "unsubscribe", "test", 1_700_000_000)
    store = RedisStore(url)
    store.add_suppressions(scope_for(account), [entry])
    store.close()


def _until(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _start_pair(start_milter: Callable[..., MilterProcess], tmp_path: Path, url: str,
                fleet_size: int = 2) -> list[MilterProcess]:
    return [start_milter(_config(url, tmp_path / f"fallback-{n}.db", fleet_size), name=f"m{n}") for n in (1, 2)]


@pytest.mark.parametrize("fault, fleet_size", [("kill", 2), ("stop", 0)])  # stop: the fleet size learned
def test_an_outage_under_load_keeps_the_policy_and_is_reconciled(
        start_milter: Callable[..., MilterProcess], tmp_path: Path, fault: str, fleet_size: int) -> None:
    server = RedisProcess(tmp_path, persist=True).start()
    try:
        pair = _start_pair(start_milter, tmp_path, server.url, fleet_size)
        if not fleet_size:  # each heartbeat (every 5 s) counts the hosts heard of lately
            assert _until(lambda: all("learned from the store: 2 milter host(s)" in m.log() for m in pair), 12)
        _list_recipient(pair[0], server.url, "shop.example")
        before = [_message(pair[n % 2], "shop.example") for n in range(6)]  # 6 of 20 spent in Redis
        assert before == ["accepted"] * 6
        assert _message(pair[0], "shop.example", LISTED) == "rejected"  # Redis says: listed
        time.sleep(0.6)  # the replicas built (refresh_ms 200)
        server.kill() if fault == "kill" else server.pause()
        down = time.monotonic()
        outcomes = [_message(pair[n % 2], account) for n in range(40) for account in ("shop.example", "blog.example")]
        listed = [_message(milter, "shop.example", LISTED) for milter in pair]
        outage = time.monotonic() - down
        shop, blog = outcomes[0::2], outcomes[1::2]
        assert "store_error" not in outcomes, "a clean recipient met on_error during the outage"
        # README, "Local fallback": at most capacity + rate × T across the fleet (fleet size right);
        # the local buckets start empty, so this comes on top of what Redis had seen.
        bound = LIMIT + LIMIT / 3600 * outage + 2  # + one rounding per milter
        for account_outcomes in (shop, blog):
            assert LIMIT - 2 <= account_outcomes.count("accepted") <= bound, account_outcomes
            assert set(account_outcomes) <= {"accepted", "refused"}
        assert listed == ["unconfirmed", "unconfirmed"]  # a "maybe" cannot be confirmed: 4xx, never 5xx
        local = [d for d in pair[1].decisions() if d.get("store") == "local"]  # the log says who decided
        assert any(d["reason"] == "ratelimit" and "decided by this host alone" in d["why"] for d in local), local
        assert any(d["reason"] == "fallback_unconfirmed" and "cannot" not in d["why"] for d in local)
        if fault == "kill":  # a milter restarted during the outage keeps its spend in its file
            pair[0].stop()
            assert _until(lambda: _port_free(pair[0].port), 5)  # its worker finishes its drain
            pair[0].start()
            # No replica yet in the new process: no recipient can be cleared, so each is deferred
            # (README: a milter started during an outage); its spend waits in its file.
            assert _message(pair[0], "shop.example") == "unconfirmed"
        server.start() if fault == "kill" else server.resume()
        assert _until(lambda: all("local fallback reconciled" in m.log() for m in pair), 10), pair[0].log()[-2000:]
        assert _until(lambda: all("leaving local mode" in m.log() for m in pair), 10)
        # The outage's spend is in Redis's buckets: the level stands above the capacity, and the
        # account waits until it drains (the long-run average holds).
        # A frozen Redis runs, once resumed, the debit each milter timed out on (it was charged
        # locally too): counted twice, never lost. Up to one per milter and account.
        twice = 0 if fault == "kill" else len(pair)
        for account, spent in (("shop.example", 6 + shop.count("accepted")), ("blog.example", blog.count("accepted"))):
            assert spent - 0.5 <= _level(server, account) <= spent + twice + 0.5, account
        assert _message(pair[1], "shop.example") == "refused"
        assert _message(pair[1], "fresh.example") == "accepted"  # back on Redis, mail flows
        for milter in pair:
            assert "Traceback" not in milter.log()
        print(f"local fallback ({fault}): outage {outage:.2f} s, shop {shop.count('accepted')} and blog "
              f"{blog.count('accepted')} accepted of {LIMIT}/hour across 2 milters; Redis level after "
              f"reconciling {_level(server, 'shop.example'):.1f}")
    finally:
        server.kill()


def test_a_sentinel_failover_is_served_locally_and_reconciled_on_the_new_master(
        start_milter: Callable[..., MilterProcess], tmp_path: Path) -> None:
    """With Sentinel, the seconds until the promotion are served locally (no 451), then the
    milter follows the new master and adds what it spent there."""
    from tests.helpers.sentinel import sentinel_set

    with sentinel_set(tmp_path) as fleet:
        milter = start_milter(_config(fleet.url(), tmp_path / "fallback.db", 1))
        assert [_message(milter, "shop.example") for _ in range(3)] == ["accepted"] * 3
        fleet.master.kill()
        outcomes: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "local fallback reconciled" not in milter.log():
            outcomes.append(_message(milter, f"a{len(outcomes) % 5}.example"))
            time.sleep(0.02)
        assert "local fallback reconciled" in milter.log(), milter.log()[-2000:]
        assert outcomes and set(outcomes) == {"accepted"}, outcomes  # no 451 across the failover
        locally = sum(1 for d in milter.decisions() if d.get("store") == "local" and d.get("stage") == "eom")
        with fleet.replica.client() as new_master:  # the promoted replica holds the local spend
            reconciled = sum(float(new_master.hget(bucket_key(f"a{n}.example", "hour"), "level") or 0)
                             for n in range(5))
        assert locally > 0 and reconciled >= locally - 0.5, (locally, reconciled)
        print(f"sentinel failover with on_error=local: {len(outcomes)} messages, none deferred, "
              f"{locally} decided locally and reconciled on the new master")
