"""Does the cost per message stay flat as accounts grow? 10, 10,000 and 1,000,000 accounts
holding live buckets in Redis, then the milter alone (mailflow on Redis, all checks on) under
the same load, each size measured in the same run: once with one sending account, once with
every message from another of the live accounts (no level this milter saw lately to go on, so
RCPT reads the bucket from Redis). Also Redis memory per active account.

    .venv/bin/python -m bench.scale [--sizes 10,10000,1000000] [--messages 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import redis

from bench.harness import python_process
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
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    os.environ["MAILFLOW_SUPPRESSION_KEY"] = KEY
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="mailflow-bench-") as scratch, redis_server(Path(scratch)) as (url, _):
        client = redis.Redis.from_url(url)
        port = free_port()
        config = mailflow_config(url, port)
        config["ratelimit"] = {"limits": ["100000000/hour"]}
        cfg = write_config(Path(scratch) / "scale.toml", config)
        with python_process("mailflow", "run", "-c", str(cfg), port=port):
            socket = f"inet:{port}@127.0.0.1"
            milter_alone(socket, 300, 10)  # warm-up
            for size in sizes:
                client.flushall()
                base = int(client.info("memory")["used_memory"])
                fill_seconds = fill_buckets(client, size)
                per_account = (int(client.info("memory")["used_memory"]) - base) / size
                one = milter_alone(socket, args.messages, 20)
                spread = milter_alone(socket, args.messages, 20, accounts=size)  # each message another account
                results[str(size)] = {"fill_seconds": round(fill_seconds, 1), "redis_bytes_per_account": round(per_account),
                                      **pick(one), **{f"spread_{k}": v for k, v in pick(spread).items()}}
                print(f"{size:>9} accounts: {results[str(size)]}", flush=True)
        client.close()
    smallest = results[str(sizes[0])]
    summary = {size: {"one_account": round(r["decisions_per_s"] / smallest["decisions_per_s"], 2),
                      "spread": round(r["spread_decisions_per_s"] / smallest["spread_decisions_per_s"], 2)}
               for size, r in results.items()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps({"sizes": results, "decisions_ratio_vs_smallest": summary}, indent=2) + "\n")
    print("decisions/s ratio vs the smallest size (one sending account; load spread over all):", summary)


if __name__ == "__main__":
    main()
