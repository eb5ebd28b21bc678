"""Redis Sentinel, for real: a master, a replica and three sentinels on loopback (tests/helpers/sentinel).

The store finds the master through the sentinels, never writes to a replica, follows a failover
(kill -9 of the master) through the real milter protocol without a restart, and an empty store
under it (a new epoch) is one WARNING line and mailflow_store_resets_total.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailflow import metrics
from mailflow.metrics.prom import PromRecorder
from mailflow.milter.client import MilterClient
from mailflow.ratelimit.limits import parse_limit
from mailflow.store import StoreError
from mailflow.store.redis import RedisStore, bucket_key
from mailflow.store.redis_sentinel import REDISCOVER_EVERY, STORE_EPOCH_KEY, WATCH_EVERY
from tests.helpers.sentinel import SERVICE, readonly_errors, sentinel_set
from tests.helpers.servers import MilterProcess

TIMEOUT_MS = 200
LIMIT = 40  # per account per day: drains 40 tokens a day, so a level reads as a count
FOLLOW_BOUND = 5.0  # seconds from the promotion to the first message accepted again (measured: see README)
LOST_BOUND = 2  # debits an asynchronous replica may miss at the kill (each one message over the limit)
SENTINEL_PASSWORD = "Sentinel-Pw-7c1e"


def test_discovery_epoch_and_sentinel_passwords(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    limits = (parse_limit(f"{LIMIT}/day"),)
    with sentinel_set(tmp_path, sentinel_password=SENTINEL_PASSWORD) as fleet:
        store = RedisStore(fleet.url(f"sentinel_password={SENTINEL_PASSWORD}"), timeout_ms=TIMEOUT_MS)
        try:
            assert store.debit("shop.example", limits, 1).allowed
            with fleet.master.client() as master:
                assert master.exists(bucket_key("shop.example", "day"))
                epoch = master.get(STORE_EPOCH_KEY)
            assert epoch and store._follower is not None and store._follower.epoch == epoch
            # The master empty under the milter (here FLUSHALL): the next discovery calls it a reset.
            recorder = PromRecorder()
            metrics.RECORDER = recorder
            with fleet.master.client() as master:
                master.flushall()
            with caplog.at_level(logging.WARNING, logger="mailflow.store"):
                assert store._follower.check()
            resets = [r.getMessage() for r in caplog.records if "store reset" in r.getMessage()]
            assert len(resets) == 1 and "another data set" in resets[0]
            scraped = {s.name: s.value for f in recorder.registry.collect() for s in f.samples}
            assert scraped["mailflow_store_resets_total"] == 1
            assert readonly_errors(fleet.replica) == 0
            # A planned failover (SENTINEL FAILOVER): the old master stays up, writable until
            # Sentinel demotes it (its 10 s INFO period); the store follows the sentinels' word
            # (asked every WATCH_EVERY) without waiting for an error.
            with fleet.sentinels[0].client() as sentinel:
                sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)
                for _ in range(200):  # until the sentinels name the new master (bounded: 200 × 25 ms)
                    if int(sentinel.execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)[1]) \
                            == fleet.replica.port:
                        break
                    time.sleep(0.025)
            switched = time.monotonic()
            while store._follower.master != ("127.0.0.1", fleet.replica.port) and time.monotonic() - switched < 5:
                time.sleep(0.02)
            followed = time.monotonic() - switched
            assert followed <= WATCH_EVERY + REDISCOVER_EVERY + 0.5, followed
            print(f"planned failover: followed {followed:.2f} s after the sentinels named the new master")
            assert store.debit("shop.example", limits, 1).allowed
            with fleet.replica.client() as new_master:
                assert new_master.exists(bucket_key("shop.example", "day"))
        finally:
            metrics.RECORDER = metrics.Recorder()
            store.close()
        for query, words in (("sentinel_password=Not-The-Pw-93", "wrong sentinel password"),
                             ("", "requires a password")):
            bad = RedisStore(fleet.url(query), timeout_ms=TIMEOUT_MS)
            try:
                with pytest.raises(StoreError) as caught:
                    bad.debit("shop.example", limits, 1)
                line = str(caught.value)
                assert words in line and "\n" not in line and "wrong" not in line.replace(words, "").replace(
                    "sentinel_password=", ""), line
                assert line.count(words) == 3  # one clause per sentinel, in one line
                with pytest.raises(StoreError, match=words):
                    bad.domains()  # the admin path says the same
            finally:
                bad.close()


def _config(url: str) -> dict[str, object]:
    return {"store": {"url": url, "timeout_ms": TIMEOUT_MS}, "accounts": {"identify": ["sasl"]},
            "ratelimit": {"limits": [f"{LIMIT}/day"]}, "suppression": {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"}}


def _message(milter: MilterProcess, account: str) -> str:
    """One message through the real milter: "accepted", "store_error" (451 4.3.0) or "refused"."""
    auth = {"{auth_authen}": f"bob@{account}"}
    with MilterClient(milter.socket) as c:
        c.connect("mua.example", "198.51.100.20", 40000)
        c.helo("mua.example")
        steps: list[Callable[[], Any]] = [lambda: c.mail(f"bob@{account}", macros=auth),
                                          lambda: c.rcpt("a@dest.example")]
        for step in steps:
            reply = step()
            if reply.action != "continue":
                return "store_error" if reply.smtp.startswith("451 4.3.0") else "refused"
        c.header("From", f"bob@{account}")
        c.eoh()
        reply = c.eom(macros={"i": "4ABCDEF"})
        if reply.action == "continue":
            return "accepted"
        return "store_error" if reply.smtp.startswith("451 4.3.0") else "refused"


def test_the_milter_follows_a_failover_and_never_writes_to_a_replica(
        start_milter: Callable[..., MilterProcess], tmp_path: Path) -> None:
    with sentinel_set(tmp_path) as fleet:
        milter = start_milter(_config(fleet.url()))
        admin = RedisStore(fleet.url(), timeout_ms=TIMEOUT_MS)  # the admin path (redis-py's own pool) follows too
        admin.add_domain("ops.example", "before.example")
        outcomes: list[tuple[float, str]] = []
        for _ in range(LIMIT // 2):
            outcomes.append((time.monotonic(), _message(milter, "shop.example")))
        assert {o for _, o in outcomes} == {"accepted"}
        assert readonly_errors(fleet.replica) == 0
        promoted: list[float] = []
        watcher = threading.Thread(target=lambda: promoted.append(fleet.wait_promoted(fleet.replica.port)))
        fleet.master.kill()
        killed = time.monotonic()
        watcher.start()
        deadline = killed + 20
        while time.monotonic() < deadline and len(outcomes) < 400:  # past the limit, across the failover
            outcomes.append((time.monotonic(), _message(milter, "shop.example")))
            if sum(o == "refused" for _, o in outcomes) >= 5:
                break
            time.sleep(0.005)
        watcher.join(timeout=20)
        assert promoted, "sentinel did not promote the replica"
        after = [t for t, o in outcomes if o == "accepted" and t > killed]
        assert after, f"the milter never followed: {milter.log()[-2000:]}"
        follow = after[0] - promoted[0]
        accepted = sum(o == "accepted" for _, o in outcomes)
        assert follow <= FOLLOW_BOUND, f"followed {follow:.2f} s after the promotion"
        assert LIMIT <= accepted <= LIMIT + LOST_BOUND, accepted
        assert {o for _, o in outcomes} <= {"accepted", "store_error", "refused"}
        admin_followed = False
        for _ in range(40):  # the first call fails and makes it look again; bounded: 40 × 100 ms
            try:
                admin.add_domain("ops.example", "after.example")
                admin_followed = True
                break
            except StoreError:
                time.sleep(0.1)
        admin.close()
        assert admin_followed
        with fleet.replica.client() as new_master:
            assert new_master.hget("mailflow:domains", "after.example") == "ops.example"
        # The old master back, empty and a master until Sentinel makes it a replica of the new one
        # (within its 10 s INFO period): mail flows all along, and none of it reaches the old master.
        fleet.master.start()
        later: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            later.append(_message(milter, f"a{len(later) % 50}.example"))
            with fleet.master.client() as old:
                if old.info("replication").get("master_link_status") == "up":
                    break
            time.sleep(0.05)
        assert later and set(later) == {"accepted"}, later
        with fleet.master.client() as old:
            assert old.execute_command("ROLE")[0] == "slave"
            assert "cmdstat_evalsha" not in old.info("commandstats")  # the milter's debits: none ran there
        with fleet.replica.client() as new_master:
            assert "cmdstat_evalsha" in new_master.info("commandstats")  # where they all ran
        assert readonly_errors(fleet.master) == 0 and readonly_errors(fleet.replica) == 0
        log = milter.log()
        assert log.count(f"store master for '{SERVICE}' moved") == 1 and "Traceback" not in log
        errors = sum(o == "store_error" for _, o in outcomes)
        print(f"sentinel failover: promoted {promoted[0] - killed:.2f} s after kill -9, milter followed "
              f"{follow:.2f} s after the promotion; {errors} messages deferred, {accepted} accepted (limit {LIMIT}); "
              f"{len(later)} accepted while the old master came back")
