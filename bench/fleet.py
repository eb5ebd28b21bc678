"""A fleet of milters on one Redis, on Redis Sentinel and on a three-master Redis Cluster.

Per setup, 1, 2 and 4 real mailflow milters (all checks on, one limit), each driven flat out over
the milter protocol by a load-generator process of its own (bench.postfix.milter_alone, 20
sessions, messages spread over many authenticated accounts, so a Cluster's slots all take load),
in interleaved rounds of rotating order: decisions/s (end-of-message debits) and end-of-message
p99, as ratios to one Redis with as many milters in the same round; Redis CPU per decision
(INFO used_cpu_sys + used_cpu_user of every redis-server holding data, masters and replicas;
sentinels left out; net of the same servers' CPU while every milter is idle) with one limit and
with two; Redis bytes per active account (INFO used_memory of the masters before and after one
message from each of --accounts new accounts, its sent count flushed; client buffers and the
replication backlog left out); on Sentinel, which has a replica, the cost of `[store]
wait_replicas = 1` (WAIT 1 after each debit): flat out, paced at 200 messages/s, and on the
debit's own round trip. Then the fleet one Redis core carries. Loopback only; every run is
bounded in messages and time. The Cluster (tests/helpers/redis_cluster.py, redis+cluster://) is
skipped, with the reason, where this tree has neither.

    .venv/bin/python -m bench.fleet [--messages 1000] [--rounds 5] [--accounts 5000] [--milters 1,2,4] [--peak 100]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.harness import percentile, python_process, spread
from bench.postfix import KEY, RESULTS, mailflow_config, milter_alone
from mailflow.urls import store_url_problem
from tests.helpers.servers import free_port, redis_server, write_config

SESSIONS = 20  # per milter, as in bench.postfix
PACED = 200.0  # messages/s for the WAIT latency comparison
ONE_LIMIT = ["100000000/hour"]  # nothing refused
TWO_LIMITS = ["100000000/hour", "1000000000/day"]
SENT_FLUSH = 11.0  # seconds: mailflow/sent.py writes counts within 10 s
RUN_TIMEOUT = 600.0
IDLE_SECONDS = 5.0  # Redis CPU with the milters idle, subtracted from each run's


@dataclass
class Setup:
    name: str
    url: str
    servers: list[int]  # every redis-server holding data: CPU
    masters: list[int]  # memory (a replica holds a copy)
    sockets: dict[str, str] = field(default_factory=dict)  # m0, m1, ... (one limit), two, wait
    idle_cpu: float = 0.0  # Redis CPU seconds per second with every milter idle


def drive(socket: str, messages: int, accounts: int, rate: float | None = None) -> list[float]:
    """In a load-generator process: every end-of-message latency (ms) of one milter's run."""
    samples: dict[str, list[float]] = {}
    milter_alone(socket, messages, SESSIONS, rate=rate, accounts=accounts, samples=samples)
    return samples["eom"]


def info_sum(ports: list[int], section: str, fields: tuple[str, ...]) -> float:
    total = 0.0
    for port in ports:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=10) as client:
            info = client.info(section)
        total += sum(float(info[name]) for name in fields)
    return total


def redis_cpu(ports: list[int]) -> float:
    return info_sum(ports, "cpu", ("used_cpu_sys", "used_cpu_user"))


def used_memory(ports: list[int]) -> float:
    """Memory for data: without client buffers (the milters' connections come and go) and the
    replication backlog (which fills with writes up to its size)."""
    return info_sum(ports, "memory", ("used_memory",)) - info_sum(
        ports, "memory", ("mem_clients_normal", "mem_clients_slaves", "mem_replication_backlog", "mem_aof_buffer"))


def measure(pool: Executor, setup: Setup, names: list[str], messages: int, accounts: int,
            rate: float | None = None) -> dict[str, float]:
    """The named milters of a setup driven at once: decisions/s, eom latency, Redis CPU per
    decision (net of the setup's idle CPU over the same time: its cron, sentinels and the
    milters' replica refresh)."""
    cpu, reads = redis_cpu(setup.servers), info_sum(setup.masters, "stats", ("total_reads_processed",))
    started = time.monotonic()
    futures = [pool.submit(drive, setup.sockets[name], messages, accounts, rate) for name in names]
    eom = [latency for future in futures for latency in future.result(timeout=RUN_TIMEOUT)]
    seconds = time.monotonic() - started
    used = redis_cpu(setup.servers) - cpu
    reads = info_sum(setup.masters, "stats", ("total_reads_processed",)) - reads
    decisions = messages * len(names)
    return {"decisions_per_s": round(decisions / seconds, 1), "eom_p50_ms": round(percentile(eom, 0.5), 3),
            "eom_p99_ms": round(percentile(eom, 0.99), 3),
            "redis_cpu_us_per_decision": round((used - setup.idle_cpu * seconds) * 1e6 / decisions, 2),
            "redis_cpu_gross_us_per_decision": round(used * 1e6 / decisions, 2),
            # Socket reads on the masters (bench.roundtrips); with WAIT, the replica's ACK is one too.
            "round_trips_per_decision": round(reads / decisions, 2)}


def store_wait(setup: Setup, debits: int) -> dict[str, dict[str, float]]:
    """The debit's own round trip (µs) with and without WAIT 1, one call each in turn from one
    thread (no milter, no queueing): what WAIT adds to a decision."""
    from mailflow.ratelimit.limits import parse_limit
    from mailflow.store.redis import RedisStore

    stores = {"no_wait": RedisStore(setup.url, timeout_ms=2000),
              "wait1": RedisStore(setup.url, timeout_ms=2000, wait_replicas=1, wait_timeout_ms=100)}
    took: dict[str, list[float]] = {name: [] for name in stores}
    limits = tuple(parse_limit(limit) for limit in ONE_LIMIT)
    try:
        for n in range(debits):
            for name, store in stores.items():
                started = time.perf_counter()
                store.debit(f"acct{n % 5000}.example", limits, 1)
                took[name].append((time.perf_counter() - started) * 1e6)
    finally:
        for store in stores.values():
            store.close()
    return {name: {"p50_us": round(percentile(t[50:], 0.5), 1), "p99_us": round(percentile(t[50:], 0.99), 1)}
            for name, t in took.items()}  # the first 50: connections and scripts loading


@contextmanager
def single(scratch: Path) -> Iterator[Setup]:
    with redis_server(scratch) as (url, port):
        yield Setup("single", url, [port], [port])


@contextmanager
def sentinel(scratch: Path) -> Iterator[Setup]:
    from tests.helpers.sentinel import sentinel_set

    with sentinel_set(scratch) as fleet:
        yield Setup("sentinel", fleet.url(), [fleet.master.port, fleet.replica.port], [fleet.master.port])


@contextmanager
def cluster(scratch: Path) -> Iterator[Setup]:
    """Three masters (tests/helpers/redis_cluster.py); ImportError or ValueError (the reason) where
    this tree has no Cluster helper or mailflow refuses redis+cluster://."""
    from tests.helpers.redis_cluster import redis_cluster  # type: ignore[import-not-found,unused-ignore]

    with redis_cluster(scratch, masters=3) as ports:
        masters = [int(port) for port in ports]
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in masters)
        problem = store_url_problem(url)
        if problem:
            raise ValueError(problem)  # it names the URL
        yield Setup("cluster", url, masters, masters)


def start_milters(stack: ExitStack, scratch: Path, setup: Setup, fleet: int) -> None:
    """`fleet` milters with one limit (m0...), one with two limits, and on Sentinel one with WAIT 1."""
    variants: dict[str, dict[str, Any]] = {f"m{n}": {} for n in range(fleet)}
    variants["two"] = {"ratelimit": {"limits": TWO_LIMITS}}
    if setup.name == "sentinel":
        variants["wait"] = {"store": {"url": setup.url, "timeout_ms": 2000, "wait_replicas": 1,
                                      "wait_timeout_ms": 100}}
    for name, override in variants.items():
        port = free_port()
        config = {**mailflow_config(setup.url, port), "ratelimit": {"limits": ONE_LIMIT}, **override}
        cfg = write_config(scratch / f"{setup.name}-{name}.toml", config)
        stack.enter_context(python_process("mailflow", "run", "-c", str(cfg), port=port))
        setup.sockets[name] = f"inet:{port}@127.0.0.1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages per milter and run (at least 20)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--accounts", type=int, default=5000, help="accounts the messages are spread over")
    parser.add_argument("--milters", default="1,2,4", help="fleet sizes, comma-separated")
    parser.add_argument("--peak", type=float, default=100.0,
                        help="a busy outbound MTA's peak messages/s, for the fleet one Redis core carries")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    try:
        sizes = sorted({int(n) for n in args.milters.split(",")})
    except ValueError:
        parser.error(f"--milters {args.milters!r}: expected numbers like 1,2,4")
    if args.messages < 20 or args.rounds < 1 or args.accounts < 1 or not 1 <= sizes[0] <= sizes[-1] <= 16 \
            or args.accounts % 7919 == 0 or not args.peak > 0:
        parser.error("--messages at least 20, --rounds and --accounts at least 1 (not a multiple of 7919), "
                     "--milters from 1 to 16, --peak over 0")
    os.environ["MAILFLOW_SUPPRESSION_KEY"] = KEY
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "platform": platform.platform()},
                               "messages": args.messages, "rounds": args.rounds, "accounts": args.accounts,
                               "milters": sizes, "sessions_per_milter": SESSIONS, "skipped": {}}
    scratch = Path(tempfile.mkdtemp(prefix="mailflow-fleet-"))
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    with ExitStack() as stack, ProcessPoolExecutor(max_workers=sizes[-1], mp_context=context) as pool:
        setups: list[Setup] = []
        for name, opener in (("single", single), ("sentinel", sentinel), ("cluster", cluster)):
            workdir = scratch / name
            workdir.mkdir()
            try:
                setup = stack.enter_context(opener(workdir))
                start_milters(stack, workdir, setup, sizes[-1])
            except (ImportError, ValueError, RuntimeError, TimeoutError) as exc:
                results["skipped"][name] = f"{type(exc).__name__}: {exc}"
                print(f"{name}: skipped ({results['skipped'][name]})", flush=True)
                continue
            setups.append(setup)
        results["memory"] = memory(pool, setups, args.accounts)
        runs = rounds(pool, setups, sizes, args)
        for setup in setups:
            if "wait" in setup.sockets:
                results["wait1_store_roundtrip"] = store_wait(setup, args.messages * 2)
    results["runs"] = runs
    results["stated_milter_peak_per_s"] = args.peak
    summarise(results, runs, sizes, args.results)


def memory(pool: Executor, setups: list[Setup], accounts: int) -> dict[str, dict[str, float]]:
    """Bytes per active account: one message from each of `accounts` accounts (this also warms up)."""
    before = {setup.name: used_memory(setup.masters) for setup in setups}
    for setup in setups:
        pool.submit(drive, setup.sockets["m0"], accounts, accounts).result(timeout=RUN_TIMEOUT)
    time.sleep(SENT_FLUSH)  # the sent counts (views) are part of an active account
    idle = {setup.name: redis_cpu(setup.servers) for setup in setups}
    time.sleep(IDLE_SECONDS)
    for setup in setups:
        setup.idle_cpu = (redis_cpu(setup.servers) - idle[setup.name]) / IDLE_SECONDS
    return {setup.name: {"bytes_per_account": round((used_memory(setup.masters) - before[setup.name]) / accounts),
                         "idle_redis_cpu_ms_per_s": round(setup.idle_cpu * 1000, 3)} for setup in setups}


def rounds(pool: Executor, setups: list[Setup], sizes: list[int],
           args: argparse.Namespace) -> dict[str, dict[str, list[dict[str, float]]]]:
    runs: dict[str, dict[str, list[dict[str, float]]]] = {s.name: {} for s in setups}
    for round_ in range(args.rounds):
        for setup in setups[round_ % len(setups):] + setups[:round_ % len(setups)]:
            rows: dict[str, tuple[list[str], float | None]] = {
                **{f"milters_{n}": ([f"m{i}" for i in range(n)], None) for n in sizes}, "two_limits": (["two"], None)}
            if "wait" in setup.sockets:
                rows |= {"wait1": (["wait"], None), "paced_no_wait": (["m0"], PACED), "paced_wait1": (["wait"], PACED)}
            for row, (names, rate) in rows.items():
                runs[setup.name].setdefault(row, []).append(measure(pool, setup, names, args.messages, args.accounts, rate))
                print(f"round {round_ + 1} {setup.name} {row}: {runs[setup.name][row][-1]}", flush=True)
    return runs


def summarise(results: dict[str, Any], runs: dict[str, dict[str, list[dict[str, float]]]], sizes: list[int],
              out: Path) -> None:
    med = {setup: {row: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for row, rs in rows.items()}
           for setup, rows in runs.items()}
    results["medians"] = med
    base = runs.get("single", {})
    results["paired_vs_single"] = {  # round by round, the same number of milters on one Redis
        setup: {f"milters_{n}": {k: spread([r[k] / b[k] for r, b in zip(rows[f"milters_{n}"], base[f"milters_{n}"])])
                                  for k in ("decisions_per_s", "eom_p99_ms", "redis_cpu_us_per_decision")}
                for n in sizes}
        for setup, rows in runs.items() if setup != "single" and base}
    lines = [f"{results['messages']} messages per milter and run, {results['rounds']} interleaved rounds, medians; "
             f"{SESSIONS} sessions per milter, spread over {results['accounts']} accounts; Redis CPU of every "
             "data server (masters and replicas)"]
    for name, reason in results["skipped"].items():
        lines.append(f"  {name}: skipped ({reason})")
    for setup, rows in med.items():
        memory = results["memory"][setup]
        lines.append(f"  {setup}: {memory['bytes_per_account']} bytes of Redis per active account (masters); "
                     f"idle Redis CPU {memory['idle_redis_cpu_ms_per_s']} ms/s, subtracted")
        for row, m in rows.items():
            lines.append(f"    {row:<14} {m['decisions_per_s']:8.1f} decisions/s  eom p50 {m['eom_p50_ms']:6.2f} ms  "
                         f"p99 {m['eom_p99_ms']:6.2f} ms  Redis CPU {m['redis_cpu_us_per_decision']:6.1f} µs/decision  "
                         f"{m['round_trips_per_decision']:.2f} round trips")
    for setup, rows in results["paired_vs_single"].items():
        for row, ratios in rows.items():
            lines.append(f"  {setup} vs single, {row}: " + ", ".join(
                f"{k} {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})" for k, v in ratios.items()))
    # Within a setup, round by round: what a second limit and WAIT 1 cost against one milter with one limit.
    pairs = {"two_limits": ("milters_1", ("redis_cpu_us_per_decision", "decisions_per_s")),
             "wait1": ("milters_1", ("decisions_per_s", "eom_p50_ms", "eom_p99_ms", "redis_cpu_us_per_decision")),
             "paced_wait1": ("paced_no_wait", ("eom_p50_ms", "eom_p99_ms"))}
    results["paired_within_setup"] = {
        setup: {f"{row}/{against}": {k: spread([r[k] / b[k] for r, b in zip(rows[row], rows[against])]) for k in keys}
                for row, (against, keys) in pairs.items() if row in rows}
        for setup, rows in runs.items()}
    for setup, rows in results["paired_within_setup"].items():
        for row, ratios in rows.items():
            lines.append(f"  {setup} {row}: " + ", ".join(
                f"{k} {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})" for k, v in ratios.items()))
    if "single" in med:
        lines += capacity(results, med["single"], sizes)
    if "wait1_store_roundtrip" in results:
        w = results["wait1_store_roundtrip"]
        lines.append(f"  WAIT 1, the debit's round trip alone (Sentinel's master and replica, one thread, in turn): "
                     f"p50 {w['no_wait']['p50_us']:.0f} -> {w['wait1']['p50_us']:.0f} µs, p99 "
                     f"{w['no_wait']['p99_us']:.0f} -> {w['wait1']['p99_us']:.0f} µs")
    out.mkdir(parents=True, exist_ok=True)
    (out / "fleet.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "fleet.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def capacity(results: dict[str, Any], single: dict[str, dict[str, float]], sizes: list[int]) -> list[str]:
    """The fleet one Redis core carries: decisions/s per Redis core over one milter's peak rate."""
    cpu_us = single[f"milters_{sizes[-1]}"]["redis_cpu_us_per_decision"]
    per_core = 1e6 / cpu_us
    peak = single["milters_1"]["decisions_per_s"]  # one milter flat out on this machine
    stated = results["stated_milter_peak_per_s"]
    results["capacity"] = {"redis_cpu_us_per_decision": cpu_us, "decisions_per_s_per_redis_core": round(per_core),
                           "milter_flat_out_decisions_per_s": peak, "milters_flat_out_per_redis_core": round(per_core / peak, 1),
                           "milters_at_stated_peak_per_redis_core": round(per_core / stated)}
    return [f"  one Redis core ({sizes[-1]} milters on one Redis, one limit): 10^6 / {cpu_us:.1f} µs = {per_core:,.0f} "
            f"decisions/s; / {peak:,.0f} decisions/s of one milter flat out = {per_core / peak:.1f} milters at full "
            f"speed; / {stated:g} msg/s per MTA at its peak = {per_core / stated:,.0f} MTAs"]


if __name__ == "__main__":
    main()
