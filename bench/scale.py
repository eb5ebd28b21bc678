"""Does the cost per message stay flat as accounts grow? 10, 10,000 and 1,000,000 accounts
holding live buckets, each size in a Redis of its own with a mailflow milter of its own (Redis,
all checks on), measured milter-alone in interleaved rounds of rotating order (medians of
decisions/s, latency and the milter's CPU per message): once with one sending account, once
with every message from another of the live accounts (no level this milter saw lately to go
on, and a sender address never seen, at every size). Also Redis memory per active account.

    .venv/bin/python -m bench.scale [--sizes 10,10000,1000000] [--messages 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import redis

from bench.harness import cpu_seconds, python_process
from bench.postfix import KEY, mailflow_config, milter_alone
from mailflow.store.redis import bucket_key
from tests.helpers.servers import free_port, redis_server, write_config

RESULTS = Path(__file__).parent / "results"
BATCH = 10_000


def fill_buckets(client: redis.Redis, accounts: int) -> float:
    """Live buckets for `accounts` accounts, as a busy hour leaves them; returns seconds taken."""
    started = time.monotonic()
    now = time.time()
    for start in range(0, accounts, BATCH):
        pipe = client.pipeline(transaction=False)
        for n in range(start, min(accounts, start + BATCH)):
            key = bucket_key(f"acct{n}.example", "hour")
            pipe.hset(key, mapping={"level": "5", "ts": repr(now)})
            pipe.pexpire(key, 3_600_000)
        pipe.execute()
    return time.monotonic() - started


def pick(run: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in run.items() if k in ("decisions_per_s", "eom_p50_ms", "eom_p99_ms", "rcpt_p50_ms", "rcpt_p99_ms")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,10000,1000000")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    os.environ["MAILFLOW_SUPPRESSION_KEY"] = KEY
    runs: dict[int, dict[str, list[dict[str, float]]]] = {size: {"one": [], "spread": []} for size in sizes}
    memory: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="mailflow-bench-") as scratch, ExitStack() as stack:
        sockets: dict[int, str] = {}
        pids: dict[int, int] = {}

        def measured(size: int, accounts: int = 0) -> dict[str, float]:
            """Decisions/s and latency, plus the milter's CPU per message: the steadier figure."""
            before = cpu_seconds(pids[size])
            run = pick(milter_alone(sockets[size], args.messages, 20, accounts=accounts))
            return {**run, "cpu_ms_per_msg": round((cpu_seconds(pids[size]) - before) * 1000 / args.messages, 3)}

        for size in sizes:
            url, _ = stack.enter_context(redis_server(Path(scratch)))
            client = redis.Redis.from_url(url)
            base = int(client.info("memory")["used_memory"])
            fill_seconds = fill_buckets(client, size)
            memory[size] = {"fill_seconds": round(fill_seconds, 1),
                            "redis_bytes_per_account": round((int(client.info("memory")["used_memory"]) - base) / size)}
            client.close()
            port = free_port()
            config = mailflow_config(url, port)
            config["ratelimit"] = {"limits": ["100000000/hour"]}
            cfg = write_config(Path(scratch) / f"scale-{size}.toml", config)
            pids[size] = stack.enter_context(python_process("mailflow", "run", "-c", str(cfg), port=port)).pid
            sockets[size] = f"inet:{port}@127.0.0.1"
            milter_alone(sockets[size], 300, 10)  # warm-up
        for round_ in range(args.rounds):
            for size in sizes[round_ % len(sizes):] + sizes[:round_ % len(sizes)]:
                runs[size]["one"].append(measured(size))
                runs[size]["spread"].append(measured(size, accounts=size))
                print(f"round {round_ + 1} {size} accounts: one {runs[size]['one'][-1]} "
                      f"spread {runs[size]['spread'][-1]}", flush=True)
    results = {str(size): {**memory[size], **medians(runs[size]["one"]),
                           **{f"spread_{k}": v for k, v in medians(runs[size]["spread"]).items()}} for size in sizes}
    smallest = results[str(sizes[0])]
    summary = {name: {"one_account": round(r["decisions_per_s"] / smallest["decisions_per_s"], 2),
                      "spread": round(r["spread_decisions_per_s"] / smallest["spread_decisions_per_s"], 2),
                      "cpu_one_account": round(r["cpu_ms_per_msg"] / smallest["cpu_ms_per_msg"], 2),
                      "cpu_spread": round(r["spread_cpu_ms_per_msg"] / smallest["spread_cpu_ms_per_msg"], 2)}
               for name, r in results.items()}
    for name, r in results.items():
        print(f"{name:>9} accounts: {r}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps({"rounds": args.rounds, "sizes": results,
                                                    "ratio_vs_smallest": summary}, indent=2) + "\n")
    print("decisions/s and milter CPU per message vs the smallest size, medians "
          "(one sending account; load spread over all):", summary)


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(run[k] for run in runs), 3) for k in runs[0]}


if __name__ == "__main__":
    main()
