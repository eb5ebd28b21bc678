"""Receivers' blocks: which refusals name reputation or blocking (real texts of Microsoft, Gmail,
Yahoo, Comcast, Orange, Spamhaus users, as Postfix logs them), the outbound IP they count against,
and the burst -> alert -> lifted transitions shared through the store (a fleet alerts once)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from mailflow.config import Config, ConfigError, parse_config
from mailflow.feedback.model import Outcome
from mailflow.feedback.receivers import (MAX_ALERTS_HOUR, MAX_LISTED, MAX_PAIRS, STATE_KEY, ReceiverWatch,
                                         outbound_ip, receiver_block, receivers_step)
from mailflow.metrics.receivers import ReceiverCollector
from mailflow.rbl.alerts import Alerter, body_of, subject_of
from mailflow.store import Store, StoreError, open_store

T0 = float(int(time.time()) // 3600 * 3600)  # store.add_sent keeps only recent hours
SAID = "host {mx}[192.0.2.80] said: {reply} (in reply to RCPT TO command)"

BLOCKING = [  # (dsn, status, receiver's reply, label)
    ("5.7.1", "bounced", "554 5.7.1 Service unavailable; Client host [198.51.100.7] blocked using zen.spamhaus.org;"
     " https://www.spamhaus.org/query/ip/198.51.100.7", "spamhaus"),
    ("5.7.1", "bounced", "550 5.7.1 Unfortunately, messages from [198.51.100.7] weren't sent. Please contact your"
     " Internet service provider since part of their network is on our block list (S3140). You can also refer"
     " your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.", "microsoft"),
    ("4.7.28", "deferred", "421-4.7.28 [198.51.100.7 15] Our system has detected an unusual rate of unsolicited"
     " mail originating from your IP address. To protect our users from spam, mail sent from your IP address has"
     " been temporarily rate limited. - gsmtp", "gmail-rate"),
    ("5.7.1", "bounced", "550-5.7.1 [198.51.100.7] Our system has detected that this message is likely"
     " unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked. - gsmtp",
     "gmail-unsolicited"),
    ("4.7.0", "deferred", "421 4.7.0 [TSS04] Messages from 198.51.100.7 temporarily deferred due to unexpected"
     " volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", "yahoo"),
    ("5.0.0", "bounced", "554 resimta-po-20v.sys.comcast.net comcast 198.51.100.7 Comcast BL000000 Email from"
     " your mail server has been sent in patterns that are characteristic of spam", "comcast"),
    ("5.7.1", "bounced", "550 5.7.1 Service refuse. Veuillez essayer plus tard. service refused, please try"
     " later. OFR004_105 [105]", "orange"),
    ("5.7.1", "bounced", "550 5.7.1 Client host rejected: 198.51.100.7 is listed at bl.example.net", "dnsbl"),
    ("4.7.0", "deferred", "421 4.7.0 [198.51.100.7] Our system has detected that this message is suspicious due"
     " to the very low reputation of the sending domain. - gsmtp", "reputation"),
    ("5.7.1", "bounced", "550 5.7.1 Mail from 198.51.100.7 refused: IP is blacklisted", "blocklist"),
]

NOT_BLOCKING = [  # refusals that name no reputation and no block
    ("5.1.1", "bounced", "550 5.1.1 <x@example.net>: Recipient address rejected: User unknown in virtual mailbox"
     " table"),
    ("5.1.1", "bounced", "550 5.1.1 user unknown: blocked using is not a thing here"),  # a 5.1.x is never counted
    ("5.7.1", "bounced", "554 5.7.1 <x@example.net>: Relay access denied"),
    ("5.7.1", "bounced", "550 5.7.1 Unauthenticated email from example.com is not accepted due to domain's DMARC"
     " policy."),
    ("5.7.26", "bounced", "550-5.7.26 This mail has been blocked because the sender is unauthenticated. - gsmtp"),
    ("5.7.1", "bounced", "550 5.7.1 Recipient not listed in public Name & Address Book"),
    ("5.2.2", "bounced", "552 5.2.2 Mailbox full"),
    ("4.4.1", "deferred", "connect to mx.example.net[192.0.2.80]:25: Connection refused"),
    ("2.0.0", "sent", "250 2.0.0 Ok: queued as ABC (spamhaus in the text of a delivery)"),
]


def outcome(reply: str, dsn: str = "5.7.1", status: str = "bounced", to: str = "u@hotmail.example",
            at: float = T0, service: str = "postfix/smtp") -> Outcome:
    return Outcome(at, "4AbC1", to, status, dsn, SAID.format(mx="mx.example", reply=reply)[:300], service,
                   "mx.example[192.0.2.80]:25")


@pytest.mark.parametrize("dsn,status,reply,label", BLOCKING, ids=[b[3] for b in BLOCKING])
def test_blocking_refusals_are_named(dsn: str, status: str, reply: str, label: str) -> None:
    assert receiver_block(outcome(reply, dsn, status)) == label


@pytest.mark.parametrize("dsn,status,reply", NOT_BLOCKING)
def test_other_refusals_are_not(dsn: str, status: str, reply: str) -> None:
    assert receiver_block(outcome(reply, dsn, status)) is None


@pytest.mark.timing
def test_hostile_replies_are_read_in_linear_time() -> None:
    for text in ("listed " * 5000, "blocked " + "a" * 100_000, "[TSS" * 20_000, "block" * 30_000):
        started = time.monotonic()
        receiver_block(Outcome(0, "q", "a@b", "bounced", "5.7.1", text, "postfix/smtp", ""))
        assert time.monotonic() - started < 0.5


def config(**feedback: Any) -> Config:
    rbl = feedback.pop("rbl", {"ips": ["198.51.100.7"]})
    return parse_config({"feedback": {"receiver_burst": 3, "receiver_window_minutes": 10,
                                      "receiver_clean_minutes": 60, **feedback}, "rbl": rbl})


def test_the_outbound_ip_by_agent_else_the_one_rbl_ip_else_unknown() -> None:
    one = config()
    assert outbound_ip(one, "postfix/smtp") == "198.51.100.7"
    two = config(rbl={"ips": ["198.51.100.7", "198.51.100.8"]})
    assert outbound_ip(two, "postfix/smtp") == "unknown"


def test_receiver_keys_are_checked() -> None:
    assert config().feedback.receivers.burst == 3
    for bad in (0, 101):
        with pytest.raises(ConfigError, match="receiver_burst"):
            config(receiver_burst=bad)


def test_transitions_are_pure() -> None:
    step = receivers_step({}, {"ip|d": 100}, {"ip|d": 100}, {}, 110, 3600)
    assert step.listed == {"ip|d": [110, 100, 0]} and [e[0] for e in step.events] == ["receiver_blocked"]
    again = receivers_step(step.listed, {"ip|d": 200}, {"ip|d": 200}, {}, 210, 3600)
    assert again.events == [] and again.listed["ip|d"][1] == 200
    early = receivers_step(again.listed, {}, {}, {"ip|d": 1000}, 1000, 3600)  # delivered too soon
    assert early.events == []
    lifted = receivers_step(early.listed, {}, {}, {"ip|d": 3900}, 3900, 3600)
    assert lifted.listed == {} and lifted.events == [("receiver_unblocked", "ip|d", [110, 200, 3900])]
    silent = receivers_step(again.listed, {}, {}, {}, 200 + 7 * 86400, 3600)  # no news for a week
    assert silent.listed == {} and silent.events[0][0] == "receiver_unblocked"
    assert receivers_step(again.listed, {}, {}, {}, 5000, 3600).events == []  # silence is not clean


class Recorder(Alerter):
    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg.rbl)
        self.sent: list[dict[str, Any]] = []

    def send(self, alert: dict[str, Any]) -> None:
        self.sent.append(alert)
        super().send(alert)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite://{tmp_path}/state.db", timeout_ms=2000)
    yield s
    s.close()


SPAMHAUS = BLOCKING[0][2]


def test_a_burst_alerts_once_with_suspects_then_lifts_after_clean_deliveries(store: Store) -> None:
    cfg = config()
    store.add_sent({(int(T0) // 3600, "shop.example"): 40, (int(T0) // 3600, "quiet.example"): 2})
    recorder = Recorder(cfg)
    watch = ReceiverWatch(cfg, store, clock=lambda: T0 + 100, alerter=recorder)
    watch.observe(outcome(SPAMHAUS, at=T0), "shop.example")
    watch.observe(outcome(SPAMHAUS, at=T0 + 10, to="v@hotmail.example"), "shop.example")
    watch.observe(outcome(BLOCKING[5][2], "5.1.1"), "shop.example")  # a 5.1.1 never counts
    assert watch.flush() == []
    watch.observe(outcome(SPAMHAUS, at=T0 + 20, to="x@hotmail.example"), "other.example")
    watch.observe(outcome(SPAMHAUS, at=T0 + 20, to="w@gmail.example"), "other.example")  # another domain
    [alert] = watch.flush()
    assert alert["event"] == "receiver_blocked" and alert["ip"] == "198.51.100.7"
    assert alert["receiver"] == "hotmail.example" and alert["kind"] == "spamhaus"
    assert alert["suspects"][0] == {"account": "shop.example", "sent": 40}
    assert alert["refused"] == [{"account": "shop.example", "refused": 2}, {"account": "other.example", "refused": 1}]
    assert "blocked using zen.spamhaus.org" in alert["reason"]
    assert subject_of(alert) == "[mailflow] 198.51.100.7 refused by receiver hotmail.example"
    assert "Accounts whose mail the receiver refused:" in body_of(alert)
    assert watch.refusals == {"198.51.100.7": 4} and watch.blocked_by_ip == {"198.51.100.7": 1}

    # A second follower on the same store (a fleet) sees the same burst: no second alert.
    twin = Recorder(cfg)
    other = ReceiverWatch(cfg, store, clock=lambda: T0 + 200, alerter=twin)
    for n in range(3):
        other.observe(outcome(SPAMHAUS, at=T0 + 30 + n, to=f"t{n}@hotmail.example"), None)
    assert other.flush() == [] and twin.sent == []

    # Deliveries soon after do not lift it; an hour of them after the last refusal does.
    watch.observe(outcome("250 ok", "2.0.0", "sent", at=T0 + 600), "shop.example")
    assert watch.flush(T0 + 600) == []
    watch.observe(outcome("250 ok", "2.0.0", "sent", at=T0 + 4000), "shop.example")
    [lifted] = watch.flush(T0 + 4000)
    assert lifted["event"] == "receiver_unblocked" and "after the last refusal" in lifted["detail"]
    assert subject_of(lifted) == "[mailflow] 198.51.100.7 accepted again by receiver hotmail.example"
    assert store.state_get(STATE_KEY) == "{}" and watch.blocked_by_ip == {}
    assert [a["event"] for a in recorder.sent] == ["receiver_blocked", "receiver_unblocked"]


def test_refusals_spread_beyond_the_window_are_no_burst(store: Store) -> None:
    watch = ReceiverWatch(config(), store, clock=lambda: T0 + 10000.0, alerter=Recorder(config()))
    for n in range(6):
        watch.observe(outcome(SPAMHAUS, at=T0 + n * 400, to=f"s{n}@hotmail.example"), "shop.example")  # every 6.7 min
        assert watch.flush() == []


def test_memory_is_bounded_by_recent_pairs(store: Store) -> None:
    watch = ReceiverWatch(config(), store, clock=lambda: T0 + 10000.0, alerter=Recorder(config()))
    for n in range(MAX_PAIRS + 50):
        watch.observe(outcome(SPAMHAUS, at=T0, to=f"u@d{n}.example"), f"a{n % 7}")
    assert len(watch._recent) == MAX_PAIRS and watch.refusals["198.51.100.7"] == MAX_PAIRS + 50
    watch.observe(outcome(SPAMHAUS, at=T0 + 3600, to="u@late.example"), None)
    watch.flush()
    assert len(watch._recent) == 1  # the rest fell out of the window


def test_unreadable_state_reads_as_empty(store: Store) -> None:
    store.state_swap(STATE_KEY, None, "not json")
    watch = ReceiverWatch(config(), store, clock=lambda: T0 + 100, alerter=Recorder(config()))
    for n in range(3):
        watch.observe(outcome(SPAMHAUS, at=T0 + n, to=f"u{n}@hotmail.example"), None)
    assert [a["event"] for a in watch.flush()] == ["receiver_blocked"]


def test_metrics_have_no_domain_and_no_account_label(store: Store) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    watch = ReceiverWatch(config(), store, clock=lambda: T0 + 100, alerter=Recorder(config()))
    for n in range(3):
        watch.observe(outcome(SPAMHAUS, at=T0 + n, to=f"u{n}@hotmail.example"), "shop.example")
    watch.flush()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReceiverCollector(watch))
    text = generate_latest(registry).decode()
    assert 'mailflow_receiver_blocks_total{ip="198.51.100.7"} 3.0' in text
    assert 'mailflow_receiver_blocked_domains{ip="198.51.100.7"} 1.0' in text
    assert "hotmail" not in text and "shop.example" not in text


def test_a_lifted_block_is_not_raised_again_by_its_old_burst(store: Store) -> None:
    cfg = config()
    watch = ReceiverWatch(cfg, store, clock=lambda: T0 + 100, alerter=Recorder(cfg))
    for n in range(3):
        watch.observe(outcome(SPAMHAUS, at=T0 + n, to=f"u{n}@hotmail.example"), "shop.example")
    assert [a["event"] for a in watch.flush(T0 + 100)] == ["receiver_blocked"]
    watch.observe(outcome("250 ok", "2.0.0", "sent", at=T0 + 3700), "shop.example")  # only deliveries since
    assert [a["event"] for a in watch.flush(T0 + 3700)] == ["receiver_unblocked"]
    watch.observe(outcome("250 ok", "2.0.0", "sent", at=T0 + 3710), "shop.example")
    assert watch.flush(T0 + 3710) == []


def test_the_followers_after_batch_callback_flushes(store: Store) -> None:
    from mailflow.feedback.model import FeedbackBatch

    cfg = config()
    recorder = Recorder(cfg)
    watch = ReceiverWatch(cfg, store, clock=lambda: T0 + 100, alerter=recorder)
    for n in range(3):
        watch.observe(outcome(SPAMHAUS, at=T0 + n, to=f"u{n}@hotmail.example"), None)
    watch.after_batch(FeedbackBatch(), "feedback:host:/var/log/mail.log", 1)
    assert [a["event"] for a in recorder.sent] == ["receiver_blocked"]


@settings(max_examples=300, deadline=None)
@given(reply=st.text(max_size=400), dsn=st.sampled_from(["5.7.1", "4.7.0", "5.0.0", "5.1.1", "", "x"]),
       status=st.sampled_from(["sent", "deferred", "bounced", "expired", "?"]), to=st.text(max_size=60),
       at=st.floats(allow_nan=True, allow_infinity=True))
def test_any_outcome_is_read_without_an_exception(reply: str, dsn: str, status: str, to: str, at: float) -> None:
    label = receiver_block(Outcome(at, "q", to, status, dsn, reply, "postfix/smtp", ""))
    assert label is None or status in ("deferred", "bounced")
    cfg = config()
    watch = ReceiverWatch(cfg, _MemoryState(), clock=lambda: T0, alerter=Recorder(cfg))  # type: ignore[arg-type]
    watch.observe(Outcome(at, "q", to, status, dsn, reply, "postfix/smtp", ""), to or None)
    watch.flush()


class _MemoryState:
    """The two state calls ReceiverWatch makes, and top_senders, in memory (a pure property test)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def state_get(self, key: str) -> str | None:
        return self.values.get(key)

    def state_swap(self, key: str, expected: str | None, new: str) -> bool:
        if self.values.get(key) != expected:
            return False
        self.values[key] = new
        return True

    def top_senders(self, hours: list[int], limit: int) -> list[tuple[str, int]]:
        return []


def test_the_follower_serves_them_on_feedback_listen(store: Store) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from mailflow.metrics.receivers import ReceiverCollector
    from tests.helpers.servers import free_port

    port = free_port()
    cfg = config()
    assert parse_config({"metrics": {"feedback_listen": f"127.0.0.1:{port}"}}).metrics.feedback_listen == (
        "127.0.0.1", port)
    with pytest.raises(ConfigError, match="feedback_listen"):
        parse_config({"metrics": {"rbl_listen": "127.0.0.1:9359", "feedback_listen": "127.0.0.1:9359"}})
    watch = ReceiverWatch(cfg, store, clock=lambda: T0 + 100, alerter=Recorder(cfg))
    watch.observe(outcome(SPAMHAUS, at=T0), "shop.example")
    registry = CollectorRegistry(auto_describe=False)  # the follower's /metrics: test_follow_metrics
    registry.register(ReceiverCollector(watch))
    text = generate_latest(registry).decode()
    assert 'mailflow_receiver_blocks_total{ip="198.51.100.7"} 1.0' in text


def test_a_deferral_retried_is_one_recipient_not_a_burst(store: Store) -> None:
    cfg = config()
    watch = ReceiverWatch(cfg, store, clock=lambda: T0 + 100, alerter=Recorder(cfg))
    for n in range(9):  # one recipient, deferred nine times (Postfix retries it)
        watch.observe(outcome(BLOCKING[2][2], "4.7.28", "deferred", to="same@gmail.example", at=T0 + n * 30), None)
    assert watch.flush() == []
    watch.observe(outcome(BLOCKING[2][2], "4.7.28", "deferred", to="two@gmail.example", at=T0 + 300), None)
    assert watch.flush() == []
    watch.observe(outcome(BLOCKING[2][2], "4.7.28", "deferred", to="three@gmail.example", at=T0 + 310), None)
    [alert] = watch.flush()
    assert alert["receiver"] == "gmail.example" and alert["detail"].startswith("3 recipients refused")


def test_a_storm_of_client_chosen_domains_sends_few_alerts(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    cfg = config()
    recorder = Recorder(cfg)
    watch = ReceiverWatch(cfg, store, clock=lambda: T0 + 100, alerter=recorder)
    for d in range(30):
        for n in range(3):
            watch.observe(outcome(SPAMHAUS, at=T0 + n, to=f"u{n}@d{d}.example"), "spammer.example")
    assert len(watch.flush()) == 10 and len(recorder.sent) == 10
    assert "event=receiver_alerts_cut" in caplog.text and "not_sent=20" in caplog.text
    assert watch.blocked_by_ip == {"198.51.100.7": 30}  # all recorded


class _LostReply:
    """A real store whose next state_swap writes, then fails as a connection dropped before the
    reply would (the write landed; the caller cannot know)."""

    def __init__(self, store: Store) -> None:
        self.store, self.lose = store, True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def state_swap(self, key: str, expected: str | None, new: str) -> bool:
        done = self.store.state_swap(key, expected, new)
        if self.lose:
            self.lose = False
            raise StoreError("Connection reset by peer")
        return done


def test_a_swap_whose_reply_is_lost_still_alerts_once(store: Store) -> None:
    cfg = config()
    recorder = Recorder(cfg)
    lossy = _LostReply(store)
    watch = ReceiverWatch(cfg, lossy, clock=lambda: T0 + 100, alerter=recorder)  # type: ignore[arg-type]
    for n in range(3):
        watch.observe(outcome(SPAMHAUS, at=T0 + n, to=f"u{n}@hotmail.example"), "shop.example")
    assert watch.flush() == [] and '"198.51.100.7|hotmail.example"' in (store.state_get(STATE_KEY) or "")
    [alert] = watch.flush()  # the next batch: the state is the one it wrote, so the alert was its own
    assert alert["event"] == "receiver_blocked" and alert["receiver"] == "hotmail.example"
    assert watch.flush() == [] and len(recorder.sent) == 1 and watch.blocked_by_ip == {"198.51.100.7": 1}


def test_a_block_beyond_the_states_room_is_logged_not_silent(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    cfg = config()
    full = {f"198.51.100.7|d{n}.example": [int(T0), int(T0), 0] for n in range(MAX_LISTED)}
    store.state_swap(STATE_KEY, None, json.dumps(full))  # a customer's own domains, refusing on purpose
    watch = ReceiverWatch(cfg, store, clock=lambda: T0 + 100, alerter=Recorder(cfg))
    for n in range(3):
        watch.observe(outcome(SPAMHAUS, at=T0 + n, to=f"u{n}@gmail.example"), "shop.example")
    assert watch.flush() == []
    assert "event=receiver_blocks_full" in caplog.text and "198.51.100.7|gmail.example" in caplog.text


def test_refusals_beyond_the_followed_pairs_are_logged_not_silent(store: Store,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    cfg = config()
    watch = ReceiverWatch(cfg, store, clock=lambda: T0 + 100, alerter=Recorder(cfg))
    for n in range(MAX_PAIRS):  # a customer's own domains, each refusing once
        watch.observe(outcome(SPAMHAUS, at=T0, to=f"u@d{n}.example"), "spammer.example")
    for n in range(3):
        watch.observe(outcome(SPAMHAUS, at=T0 + 1 + n, to=f"u{n}@gmail.example"), "shop.example")
    watch.flush()
    assert "event=receiver_pairs_full" in caplog.text and "not_followed=3" in caplog.text
    caplog.clear()
    watch.flush()
    assert "receiver_pairs_full" not in caplog.text  # said per batch that met it


def test_alerts_are_bounded_per_hour_too(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    cfg = config()
    recorder = Recorder(cfg)
    now = [T0 + 100]
    watch = ReceiverWatch(cfg, store, clock=lambda: now[0], alerter=recorder)
    for batch in range(8):  # a customer's domains blocking on cue, batch after batch
        for d in range(10):
            for n in range(3):
                watch.observe(outcome(SPAMHAUS, at=T0 + n, to=f"u{n}@b{batch}d{d}.example"), "spammer.example")
        watch.flush()
        now[0] += 1
    assert len(recorder.sent) == MAX_ALERTS_HOUR and "event=receiver_alerts_cut" in caplog.text
    assert "receiver_blocked 198.51.100.7|b6d0.example" in caplog.text  # the first not alerted is named
    assert watch.blocked_by_ip == {"198.51.100.7": 80}  # all recorded
    now[0] += 3600
    for n in range(3):
        watch.observe(outcome(SPAMHAUS, at=T0 + 3700 + n, to=f"u{n}@gmail.example"), "shop.example")
    [alert] = watch.flush()  # an hour on: room again
    assert alert["receiver"] == "gmail.example"
