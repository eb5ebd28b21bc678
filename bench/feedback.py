"""Delivery-feedback benchmark: can the log follower keep up with 10,000 deliveries a second?

Writes a synthetic Postfix log of 10^6 lines into a temporary directory (each message: smtpd
connect, `client=… sasl_username=…`, cleanup, qmgr `from=`, one to three `to=` deliveries,
`removed`, disconnect; ~5 % hard bounces (5.1.1, 5.7.1, 5.2.2), ~3 % deferrals; 3,000 accounts;
RFC 3339 stamps, Debian 12's rsyslog default, each one parsed, and classic stamps), then times
`wc -l` on it and feedback.tally.Tally over it, read in 1 MiB binary chunks and decoded line by
line as the follower does, taking a batch every 5,000 lines (thrown away: the store is not
measured here). Reports lines/s, deliveries/s, the time against `wc -l`'s, and the process's
resident memory after 10^5 and after 10^6 lines (flat: origins are forgotten at `removed`).
Then the whole follower on the first log, as `mailflow feedback follow --once --from-start` runs
it: batches written ahead into the store, counts and recipient digests applied, the ladder
([reputation], defaults) judging every account each batch touched; on SQLite and a real Redis.

    .venv/bin/python -m bench.feedback [--lines 1000000] [--stamps iso,classic] [--stores sqlite,redis]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from mailflow.config import parse_config
from mailflow.feedback.follow import Follower
from mailflow.feedback.tally import Tally
from mailflow.store import open_store
from tests.helpers.servers import redis_server

RESULTS = Path(__file__).parent / "results"
ACCOUNTS = 3000
CHUNK = 1 << 20
TAKE_EVERY = 5000
TARGET_DELIVERIES_PER_SECOND = 10_000
START = 1_795_000_000.0  # 2026-11-18T10:13:20Z
OUTCOMES = ([("2.0.0", "sent", "250 2.0.0 Ok: queued as 4Y3Xb02Q1Lz6N8")] * 92
            + [("4.4.1", "deferred", "connect to mx.dest.example[203.0.113.5]:25: Connection timed out")] * 3
            + [("5.1.1", "bounced", "host mx.dest.example[203.0.113.5] said: 550 5.1.1 <{rcpt}>: Recipient address "
                                    "rejected: User unknown in virtual mailbox table (in reply to RCPT TO command)")] * 3
            + [("5.7.1", "bounced", "host mx.dest.example[203.0.113.5] said: 554 5.7.1 Service unavailable; Client "
                                    "host [192.0.2.11] blocked using zen.spamhaus.org (in reply to RCPT TO command)")]
            + [("5.2.2", "bounced", "host mx.dest.example[203.0.113.5] said: 552 5.2.2 Mailbox full (in reply to "
                                    "end of DATA command)")])


def stamp(at: float, style: str) -> str:
    if style == "classic":
        return time.strftime("%b %d %H:%M:%S", time.gmtime(at))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1e6) % 1_000_000:06d}+00:00"


def write_log(path: Path, lines: int, style: str, seed: int = 17) -> None:
    """`lines` lines of a busy relay's log."""
    rng = random.Random(seed)
    written = 0
    at = START
    message = 0
    with path.open("w") as out:
        while written < lines:
            message += 1
            at += 0.004
            qid = f"{message:011X}"
            pid = 2000 + message % 50
            account = rng.randrange(ACCOUNTS)
            login = f"user{account}@customer{account}.example"
            block = [f"{stamp(at, style)} mx1 postfix/smtpd[{pid}]: connect from web{account % 200}.example[198.51.100.{account % 250}]",
                     f"{stamp(at, style)} mx1 postfix/smtpd[{pid}]: {qid}: client=web{account % 200}.example"
                     f"[198.51.100.{account % 250}]:{40000 + message % 20000}, sasl_method=PLAIN, sasl_username={login}",
                     f"{stamp(at, style)} mx1 postfix/cleanup[{pid + 100}]: {qid}: message-id=<{message}@customer{account}.example>",
                     f"{stamp(at, style)} mx1 postfix/qmgr[900]: {qid}: from=<news@customer{account}.example>, size={2000 + message % 5000}, "
                     f"nrcpt=3 (queue active)",
                     f"{stamp(at, style)} mx1 postfix/smtpd[{pid}]: disconnect from web{account % 200}.example ehlo=1 auth=1 mail=1 "
                     "rcpt=3 data=1 quit=1 commands=8"]
            for n in range(rng.randint(1, 3)):
                dsn, status, text = rng.choice(OUTCOMES)
                rcpt = f"reader{rng.randrange(1_000_000)}@dest{n}.example"
                block.append(f"{stamp(at + 0.2, style)} mx1 postfix/smtp[{pid + 200}]: {qid}: to=<{rcpt}>, "
                             f"relay=mx.dest{n}.example[203.0.113.{n + 5}]:25, delay=0.31, delays=0.01/0/0.1/0.2, dsn={dsn}, "
                             f"status={status} ({text.format(rcpt=rcpt)})")
            block.append(f"{stamp(at + 0.3, style)} mx1 postfix/qmgr[900]: {qid}: removed")
            block = block[:lines - written]
            out.write("\n".join(block) + "\n")
            written += len(block)


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def follow(path: Path, marks: tuple[int, ...]) -> tuple[float, float, Tally, dict[int, dict[str, float]]]:
    """Wall and CPU seconds to read the whole file through a Tally, and memory at each mark (lines
    read). CPU time too: the machine's cores are shared, and wall time counts the neighbours' work."""
    tally = Tally(parse_config({}), now=lambda: START)
    memory: dict[int, dict[str, float]] = {}
    pending = list(marks)
    leftover = b""
    since_take = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    with path.open("rb") as log:
        while chunk := log.read(CHUNK):
            lines = (leftover + chunk).split(b"\n")
            leftover = lines.pop()
            add_line = tally.add_line
            for raw in lines:
                add_line(raw.decode("utf-8", "replace"))
            since_take += len(lines)
            if since_take >= TAKE_EVERY:
                tally.take()
                since_take = 0
            if pending and tally.stats.lines >= pending[0]:
                memory[pending.pop(0)] = {"rss_mib": round(rss_mib(), 1), "peak_rss_mib": round(peak_mib(), 1),
                                          "origins": len(tally)}
    if leftover:
        tally.add_line(leftover.decode("utf-8", "replace"))
    tally.take()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    memory[tally.stats.lines] = {"rss_mib": round(rss_mib(), 1), "peak_rss_mib": round(peak_mib(), 1), "origins": len(tally)}
    return seconds, cpu, tally, memory


def whole_follower(path: Path, url: str) -> dict[str, float]:
    """Wall and CPU seconds of this process for the follower's --once over `path` into `url`."""
    store = open_store(url, 5000)
    try:
        follower = Follower(parse_config({"store": {"url": url}, "reputation": {}}), store, str(path),
                            from_start=True, host="bench")
        started, cpu_started = time.perf_counter(), time.process_time()
        follower.run_once()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        follower.close()
        counted = follower.counted()
    finally:
        store.close()
    deliveries = counted.get("outcomes", 0)
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "batches": follower.batches,
            "lines": counted.get("lines", 0), "deliveries": deliveries,
            "deliveries_per_second": round(deliveries / seconds)}


def wc_seconds(path: Path) -> float:
    best = float("inf")
    for _ in range(3):  # warm cache, best of three
        started = time.perf_counter()
        subprocess.run(["wc", "-l", str(path)], check=True, capture_output=True, timeout=120)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--stamps", default="iso,classic", help="comma-separated: iso (RFC 3339), classic")
    parser.add_argument("--stores", default="sqlite,redis", help="the whole follower into: sqlite, redis (none: \"\")")
    args = parser.parse_args()
    ends: dict[str, dict[str, float]] = {}
    runs: dict[str, dict[str, object]] = {}
    report = []
    with tempfile.TemporaryDirectory(prefix="mailflow-bench-feedback-") as scratch:
        for style in [s.strip() for s in args.stamps.split(",") if s.strip()]:
            path = Path(scratch) / f"mail-{style}.log"
            write_log(path, args.lines, style)
            wc = wc_seconds(path)
            seconds, cpu, tally, memory = follow(path, (args.lines // 10,))
            stats = tally.stats
            size = path.stat().st_size
            for kind in ([k.strip() for k in args.stores.split(",") if k.strip()] if not runs else []):
                with ExitStack() as stack:  # the first log only: the stamps cost the same after the tally
                    url = (f"sqlite://{scratch}/bench-{kind}.db" if kind == "sqlite"
                           else stack.enter_context(redis_server(Path(scratch)))[0])
                    ends[kind] = whole_follower(path, url)
                report.append(f"the whole follower ({style} stamps) into {kind}: {ends[kind]['lines']} lines, "
                              f"{ends[kind]['deliveries']} deliveries in {ends[kind]['seconds']}s "
                              f"({ends[kind]['cpu_seconds']} CPU s, {ends[kind]['batches']} batches): "
                              f"{ends[kind]['deliveries_per_second']} deliveries/s, with the ladder")
            path.unlink()
            run: dict[str, object] = {
                "stamps": style, "lines": stats.lines, "bytes": size, "deliveries": stats.outcomes,
                "attributed": stats.attributed, "unattributed": stats.unattributed, "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu, 2), "deliveries_per_cpu_second": round(stats.outcomes / cpu),
                "lines_per_second": round(stats.lines / seconds), "deliveries_per_second": round(stats.outcomes / seconds),
                "wc_l_seconds": round(wc, 3), "wc_l_lines_per_second": round(stats.lines / wc),
                "times_wc_l": round(seconds / wc, 1), "memory": {str(k): v for k, v in memory.items()},
                "meets_target": stats.outcomes / seconds >= TARGET_DELIVERIES_PER_SECOND,
            }
            runs[style] = run
            marks = sorted(memory)
            report.append(
                f"{style} stamps: {stats.lines} lines ({size / 2**20:.0f} MiB, {stats.outcomes} deliveries) in "
                f"{seconds:.2f}s: {run['lines_per_second']} lines/s, {run['deliveries_per_second']} deliveries/s "
                f"(target {TARGET_DELIVERIES_PER_SECOND}; {run['deliveries_per_cpu_second']} per CPU second); wc -l {wc:.3f}s ({run['wc_l_lines_per_second']} lines/s), "
                f"the tally takes {run['times_wc_l']}x wc -l's time; RSS "
                + ", ".join(f"{memory[m]['rss_mib']} MiB after {m} lines" for m in marks)
                + f" (peak {memory[marks[-1]]['peak_rss_mib']} MiB, origins held {memory[marks[-1]]['origins']})")
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
              "accounts": ACCOUNTS, "take_every_lines": TAKE_EVERY, "chunk_bytes": CHUNK, "runs": runs,
              "whole_follower": ends}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "feedback.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "feedback.txt").write_text("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
