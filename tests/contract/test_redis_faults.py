"""Redis faults, made for real, met by the Engine and the real RedisStore.

For each fault: more failed calls than any pool has connections, every reply within
timeout_ms + 250 ms, the configured on_error decision, recovery on the first call after the
fault ends (no restart), bounded connections, and bucket counts that make sense afterwards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from mailflow.config import parse_config
from mailflow.engine import Engine
from mailflow.milter.client import MilterClient
from mailflow.model import Client, Decision, Verdict
from mailflow.ratelimit.limits import parse_limit
from mailflow.store import StoreError
from mailflow.store.redis import RedisStore, bucket_key
from mailflow.store.redis_pool import SIZE as HOT_POOL_SIZE
from tests.helpers.redis_faults import CuttingProxy, RedisProcess, Timed, burst, timed
from tests.helpers.servers import MilterProcess

pytestmark = pytest.mark.timing  # wall-clock bounds: run alone, after the parallel part (Makefile)

TIMEOUT_MS = 200
BOUND = TIMEOUT_MS / 1000 + 0.25  # the acceptance bound on every reply
ADMIN_POOL_SIZE = 100  # redis-py's default ConnectionPool size, for the admin calls
FAILURES = max(HOT_POOL_SIZE, ADMIN_POOL_SIZE) + 20
LIMITS = (parse_limit("1000/day"),)  # drains ~0.01 token/s: a level reads as a count
ACCOUNT = "shop.example"
CLIENT = Client(hostname="mua.example", address="198.51.100.20", port=40000)
PASSWORD = "Fault-Suite-Pw-7f3a9"


def make_engine(url: str, on_error: str) -> Engine:
    config = parse_config({
        "store": {"url": url, "timeout_ms": TIMEOUT_MS},
        "milter": {"on_error": on_error},
        "ratelimit": {"limits": ["1000/day"]},
        "suppression": {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"},
    })
    return Engine(config, RedisStore(url, timeout_ms=TIMEOUT_MS))


def send(engine: Engine, n: int = 0) -> tuple[Decision, str, float]:
    """One message through MAIL, RCPT and EOM: the last decision, its stage, the slowest stage's time."""
    (message, decision), worst = timed(lambda: engine.mail(CLIENT, "bob@shop.example", "bob@shop.example"))
    assert decision.verdict is Verdict.CONTINUE
    decision, seconds = timed(lambda: engine.rcpt(CLIENT, message, f"r{n}@dest.example"))
    if decision.refuses:
        return decision, "rcpt", max(worst, seconds)
    engine.header(message, "From", "bob@shop.example")
    decision, eom_seconds = timed(lambda: engine.eom(CLIENT, message, "QID"))
    return decision, "eom", max(worst, seconds, eom_seconds)


def expected(on_error: str) -> tuple[Verdict, str]:
    return (Verdict.TEMPFAIL, "store_error") if on_error == "tempfail" else (Verdict.CONTINUE, "store_error_accepted")


@dataclass
class Fault:
    """How to make one fault and end it; `url` is what the store talks to."""

    url: str
    begin: Callable[[], None]
    end: Callable[[], None]
    server: RedisProcess
    password: str | None = None
    cause: str = ""  # words the StoreError must say
    concurrent: bool = False  # each failed call takes the whole timeout: fail them side by side
    # Failed debits Redis ran all the same: "none"; "each" (the reply was lost, never resent);
    # "some" (sent before the call timed out: run when Redis resumes, at most once each).
    executed: str = "none"
    level_after_restart: Callable[[float], float] = lambda before: before  # the level the fault leaves
    extras: list[object] = field(default_factory=list)
    name: str = ""


def _kill_and_restart(tmp: Path, persist: bool) -> Fault:
    server = RedisProcess(tmp, persist=persist).start()
    return Fault(server.url, server.kill, server.start, server, cause="cannot connect",
                 level_after_restart=(lambda before: before) if persist else (lambda before: 0.0))


def _pause(tmp: Path) -> Fault:
    server = RedisProcess(tmp).start()

    def end() -> None:
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started[0])))  # stopped well past the timeout
        server.resume()

    started = [0.0]

    def begin() -> None:
        started[0] = time.monotonic()
        server.pause()

    # A debit sent before its call timed out waits in Redis's socket buffer and runs on SIGCONT.
    return Fault(server.url, begin, end, server, cause=f"within {TIMEOUT_MS} ms", concurrent=True,
                 executed="some")


def _oom(tmp: Path) -> Fault:
    server = RedisProcess(tmp, "--maxmemory-policy", "noeviction").start()
    admin = server.client()
    return Fault(server.url, lambda: admin.config_set("maxmemory", 1), lambda: admin.config_set("maxmemory", 0),
                 server, cause="out of memory")


def _readonly(tmp: Path) -> Fault:
    """A failover the store's URL did not follow: its node is demoted to a replica, then back."""
    fast_sync = ("--repl-diskless-sync-delay", "0")
    server = RedisProcess(tmp, *fast_sync).start()
    other = RedisProcess(tmp, *fast_sync, "--replicaof", "127.0.0.1", str(server.port)).start()
    admin, other_admin = server.client(), other.client()

    def begin() -> None:
        _wait(lambda: other_admin.info("replication")["master_link_status"] == "up")
        assert admin.execute_command("WAIT", 1, 5000) == 1  # the replica has every write: none lost here
        other_admin.replicaof("NO", "ONE")
        admin.replicaof("127.0.0.1", other.port)
        _wait(lambda: admin.info("replication")["master_link_status"] == "up")

    return Fault(server.url, begin, lambda: admin.replicaof("NO", "ONE"), server, cause="READONLY replica",
                 extras=[other])


def _password(tmp: Path, ours: str | None) -> Fault:
    """The password is rotated under the store (or set where it had none), then put back."""
    server = RedisProcess(tmp, *(["--requirepass", ours] if ours else [])).start()
    admin = server.client(ours)

    def begin() -> None:
        admin.config_set("requirepass", "rotated-" + PASSWORD)
        admin.client_kill_filter(_type="normal", skipme=False)  # authenticated sessions end too

    def end() -> None:
        with server.client("rotated-" + PASSWORD) as rotated:
            rotated.config_set("requirepass", ours or "")

    url = f"redis://:{ours}@127.0.0.1:{server.port}/0" if ours else server.url
    return Fault(url, begin, end, server, password=ours, cause="wrong password" if ours else "NOAUTH")


def _cut(tmp: Path) -> Fault:
    server = RedisProcess(tmp).start()
    proxy = CuttingProxy(server.port)

    def begin() -> None:
        proxy.cut_after = 6  # past a handshake's "+OK", inside a debit's reply

    def end() -> None:
        proxy.cut_after = None

    # Redis ran each cut debit once (its reply was lost), and mailflow never sent one twice.
    return Fault(proxy.url, begin, end, server, cause="reset", executed="each", extras=[proxy])


def _wait(condition: Callable[[], bool], seconds: float = 10.0, why: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"condition not met in {seconds} s {why()}"
        time.sleep(0.02)


FAULTS: dict[str, Callable[[Path], Fault]] = {
    "kill9-restart": lambda tmp: _kill_and_restart(tmp, persist=True),
    "restart-empty": lambda tmp: _kill_and_restart(tmp, persist=False),
    "sigstop": _pause,
    "oom": _oom,
    "readonly-replica": _readonly,
    "wrong-password": lambda tmp: _password(tmp, PASSWORD),
    "no-password": lambda tmp: _password(tmp, None),
    "reset-mid-reply": _cut,
}


@pytest.fixture
def fault(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fault]:
    made = FAULTS[request.param](tmp_path)
    made.name = request.param
    yield made
    for extra in made.extras:
        if isinstance(extra, CuttingProxy):
            extra.close()
        elif isinstance(extra, RedisProcess):
            extra.kill()
    made.server.kill()


def _level(server: RedisProcess, password: str | None = None) -> float:
    with server.client(password) as admin:
        return float(admin.hget(bucket_key(ACCOUNT, "day"), "level") or 0)


@pytest.fixture
def store_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """mailflow's log lines, even after a CLI run in this process made its logger stop propagating."""
    logger = logging.getLogger("mailflow")
    propagate, logger.propagate = logger.propagate, True
    caplog.set_level(logging.INFO, logger="mailflow")
    yield caplog
    logger.propagate = propagate


@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
@pytest.mark.parametrize("fault", list(FAULTS), indirect=True)
def test_a_fault_meets_on_error_and_mail_recovers(fault: Fault, on_error: str,
                                                   store_log: pytest.LogCaptureFixture) -> None:
    engine = make_engine(fault.url, on_error)
    store = engine.store
    assert isinstance(store, RedisStore)
    try:
        for n in range(3):
            assert send(engine, n)[0].verdict is Verdict.CONTINUE
        _wait(lambda: store.replica.ready)  # RCPT answers from memory, as in steady service
        before = _level(fault.server, fault.password)
        assert before == pytest.approx(3, abs=0.1)

        fault.begin()
        if fault.concurrent:
            outcome = burst(lambda: send(engine), FAILURES, threads=HOT_POOL_SIZE + 16)
            admin = burst(lambda: _admin_error(store), FAILURES, threads=HOT_POOL_SIZE + 16)
        else:
            outcome, admin = Timed(), Timed()
            for n in range(FAILURES):
                outcome.add(*timed(lambda: send(engine, n)))
                admin.add(*timed(lambda: _admin_error(store)))
        fault.end()

        sent = [result for result in outcome.results if isinstance(result, tuple)]
        verdict, reason = expected(on_error)
        assert {(d.verdict, d.reason) for d, _, _ in sent} == {(verdict, reason)}
        if on_error == "tempfail":
            assert {str(d.reply)[:9] for d, _, _ in sent} == {"451 4.3.0"}
        worst = max([seconds for _, _, seconds in sent] + [admin.worst])
        assert worst < BOUND, f"a reply took {worst * 1000:.0f} ms"
        errors = {str(e) for e in admin.results}
        assert all(e.startswith("redis: ") for e in errors), errors
        assert any(fault.cause in e for e in errors), errors
        if fault.password:
            assert all(fault.password not in e for e in errors)
            assert fault.password not in store_log.text

        # The first call after the fault ends is answered: no restart, no waiting.
        decision, _, _ = send(engine)
        assert (decision.verdict, decision.reason) == (Verdict.CONTINUE, "ok"), decision
        store.domains()
        store.ping()
        debits_sent = sum(stage == "eom" for _, stage, _ in sent)
        low = fault.level_after_restart(before) + (debits_sent if fault.executed == "each" else 0) + 1
        high = low + (debits_sent if fault.executed == "some" else 0)
        # No double debit: what ran, once each (a resumed Redis may still be running what was sent).
        _wait(lambda: low - 0.1 <= _level(fault.server, fault.password) <= high + 0.1, seconds=2,
              why=lambda: f"level {_level(fault.server, fault.password)} not in [{low}, {high}]")

        # Bounded connections: the hot pool's and redis-py's together, whatever failed.
        assert store._hot_pool.open_connections() <= HOT_POOL_SIZE
        assert fault.server.clients_connected(fault.password) <= HOT_POOL_SIZE + 10
        print(f"{fault.name} on_error={on_error}: {FAILURES} failed messages and admin calls, worst reply "
              f"{worst * 1000:.0f} ms, {store._hot_pool.open_connections()} hot connections open, "
              f"{fault.server.clients_connected(fault.password)} Redis clients after recovery")
        # The log says so once at the start, at most every few seconds after, and once at the end.
        lines = [r.getMessage() for r in store_log.records]
        assert 1 <= sum(line.startswith("store unavailable for") for line in lines) <= 3, lines
        assert sum(line.startswith("store answering again") for line in lines) == 1, lines
        assert not [r for r in store_log.records if r.exc_info]
    finally:
        engine.close()  # its sent-count flusher would retry the killed server's port for ever
        store.close()


def _admin_error(store: RedisStore) -> object:
    """A call on redis-py's own pool (a pipelined write, as the sent counts make) under the
    fault: its StoreError, or what it returned."""
    try:
        return store.add_sent({(int(time.time()) // 3600, "fault.example"): 1})
    except StoreError as exc:
        return exc


def test_restart_empty_reloads_the_script_without_double_debit(tmp_path: Path) -> None:
    """NOSCRIPT after a restart: the debit is sent once more only because it never ran."""
    server = RedisProcess(tmp_path).start()
    store = RedisStore(server.url, timeout_ms=TIMEOUT_MS)
    try:
        store.debit(ACCOUNT, LIMITS, 5)
        server.restart()
        with server.client() as admin:
            assert admin.script_exists(store._debit_script.sha) == [False]
        result = store.debit(ACCOUNT, LIMITS, 2)
        assert result.allowed and result.levels[0] == pytest.approx(2, abs=0.01)
        server.restart()  # every other script, each on its first call after an empty restart
        from tests.unit.test_suppression import MATCHER

        entry = MATCHER.make_entry("a@x.example", "complaint", "test", 1_700_000_000)
        assert store.add_suppressions("global", [entry]) == 1  # a pipeline with a script in it
        assert store.record_trap_hit(ACCOUNT) == 1
        assert store.state_swap("k", None, "v")
        assert not store.remove_domain(ACCOUNT, "nothing.example")
    finally:
        store.close()
        server.kill()


def test_connections_stay_bounded_under_a_burst(tmp_path: Path) -> None:
    """More callers at once than the hot pool holds: the rest wait up to the timeout, then fail."""
    server = RedisProcess(tmp_path).start()
    store = RedisStore(server.url, timeout_ms=TIMEOUT_MS)
    try:
        store.debit(ACCOUNT, LIMITS, 1)
        server.pause()
        outcome = burst(lambda: _debit_error(store), 2 * HOT_POOL_SIZE, threads=HOT_POOL_SIZE + 16)
        server.resume()
        assert {type(r) for r in outcome.results} == {StoreError}
        assert any("busy" in str(r) for r in outcome.results)
        assert outcome.worst < BOUND
        assert store.debit(ACCOUNT, LIMITS, 1).allowed
        assert server.clients_connected() <= HOT_POOL_SIZE + 2
    finally:
        store.close()
        server.kill()


def _debit_error(store: RedisStore) -> object:
    try:
        return store.debit(ACCOUNT, LIMITS, 1)
    except StoreError as exc:
        return exc


def test_errors_never_show_the_password(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path, "--requirepass", PASSWORD).start()
    store = RedisStore(f"redis://:{PASSWORD}x@127.0.0.1:{server.port}/0", timeout_ms=TIMEOUT_MS)
    try:
        for call in (lambda: store.debit(ACCOUNT, LIMITS, 1), store.ping, store.domains,
                     lambda: store.add_sent({(1, ACCOUNT): 1})):
            with pytest.raises(StoreError, match="wrong password") as caught:
                call()
            assert PASSWORD not in str(caught.value)
    finally:
        store.close()
        server.kill()


def test_the_redis_py_errors_are_named_in_words() -> None:
    from mailflow.store.redis_errors import describe

    assert describe(redis.exceptions.ReadOnlyError("You can't write"), 250).startswith("READONLY replica")
    assert describe(redis.exceptions.TimeoutError("Timeout reading from x"), 250) == "no answer within 250 ms"
    assert describe(redis.exceptions.MaxConnectionsError("Too many connections"), 250).startswith("every connection")
    assert describe(ConnectionResetError(104, "Connection reset by peer"), 250).startswith("connection lost")


def _milter_config(url: str) -> dict[str, object]:
    return {"store": {"url": url, "timeout_ms": TIMEOUT_MS}, "accounts": {"identify": ["sasl"]},
            "ratelimit": {"limits": ["1000/day"]}, "suppression": {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"}}


def _milter_message(milter: MilterProcess) -> tuple[str, float]:
    """One message through the real milter: the last reply ("continue" or the SMTP reply), the slowest step."""
    auth = {"{auth_authen}": "bob@shop.example"}
    worst = 0.0
    with MilterClient(milter.socket) as c:
        c.connect("mua.example", "198.51.100.20", 40000)
        c.helo("mua.example")
        for step in (lambda: c.mail("bob@shop.example", macros=auth), lambda: c.rcpt("a@dest.example")):
            reply, seconds = timed(step)
            worst = max(worst, seconds)
            if reply.action != "continue":
                return reply.smtp, worst
        c.header("From", "bob@shop.example")
        c.eoh()
        reply, seconds = timed(lambda: c.eom(macros={"i": "4ABCDEF"}))
        return reply.smtp, max(worst, seconds)


def test_the_milter_rides_out_a_kill_9(start_milter: Callable[..., MilterProcess], tmp_path: Path) -> None:
    """Through the real milter over the milter protocol: Redis killed, mail deferred within the
    bound, one log line per few seconds, then mail flows on the first message after the restart."""
    server = RedisProcess(tmp_path, persist=True).start()
    milter = start_milter(_milter_config(server.url))

    def message() -> tuple[str, float]:
        return _milter_message(milter)

    try:
        assert message()[0] == "continue"
        server.kill()
        replies = [message() for _ in range(FAILURES)]
        assert {smtp[:9] for smtp, _ in replies} == {"451 4.3.0"}
        worst = max(seconds for _, seconds in replies)
        assert worst < BOUND, f"a reply took {worst * 1000:.0f} ms"
        server.start()
        assert message()[0] == "continue"  # the first message after the restart
        assert _level(server) == pytest.approx(2, abs=0.1)
        log = milter.log()
        assert 1 <= log.count("store unavailable for") <= 3 and log.count("store answering again") == 1
        assert "Traceback" not in log and "MaxConnectionsError" not in log
        print(f"milter kill -9: {FAILURES} messages deferred, worst reply {worst * 1000:.0f} ms, "
              f"{server.clients_connected()} Redis clients after recovery")
    finally:
        server.kill()

