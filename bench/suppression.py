"""Suppression benchmark: import 1,000,000 addresses into Redis with the CLI, then compare RCPT
lookups at 1,000,000 entries with the same lookups at 10 entries (the baseline, measured in the
same run): an unlisted recipient, answered by the milter's in-memory replica, and a listed one,
which the replica sends to Redis (one round trip). Also: how long the replica takes to build
from 1,000,000 entries and how big its filter is. Everything runs against a redis-server this
script starts on loopback and stops by pid; every loop is bounded.

    .venv/bin/python -m bench.suppression [--entries 1000000] [--lookups 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mailflow.config import load_config
from mailflow.store.redis import RedisStore
from mailflow.suppression.entries import GLOBAL, Matcher, scope_for
from mailflow.suppression.keys import Keyring
from mailflow.suppression.normalize import AddressForms
from tests.helpers.servers import redis_server

RESULTS = Path(__file__).parent / "results"
KEY = "bench-suppression-key-0123456789"


def ready_store(url: str) -> tuple[RedisStore, float]:
    """A store whose replica is built, and the seconds the build took."""
    store = RedisStore(url, timeout_ms=5000)
    started = time.monotonic()
    store.find_suppressions("warm.example", [GLOBAL], ["0" * 32])  # starts the replica
    deadline = started + 300
    while not store.replica.ready and time.monotonic() < deadline:
        time.sleep(0.05)
    return store, time.monotonic() - started


def lookup_latencies(store: RedisStore, account: str, recipients: list[str]) -> list[float]:
    """Microseconds per RCPT check (both scopes and the hold flag), as the milter makes it."""
    matcher = Matcher(AddressForms(), Keyring(KEY.encode()))
    scopes = [GLOBAL, scope_for(account)]
    samples = []
    deadline = time.monotonic() + 120
    for recipient in recipients:
        keys = matcher.recipient_keys(recipient)
        started = time.perf_counter()
        store.find_suppressions(account, scopes, keys)
        samples.append((time.perf_counter() - started) * 1e6)
        if time.monotonic() > deadline:
            break
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_us": round(statistics.median(ordered), 1), "p99_us": round(ordered[int(len(ordered) * 0.99) - 1], 1),
            "min_us": round(ordered[0], 1), "max_us": round(ordered[-1], 1), "n": len(ordered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=20_000)
    args = parser.parse_args()
    os.environ["MAILFLOW_SUPPRESSION_KEY"] = KEY
    with tempfile.TemporaryDirectory(prefix="mailflow-bench-") as scratch, redis_server(Path(scratch)) as (url, port):
        config_path = Path(scratch) / "bench.toml"
        config_path.write_text(f'[store]\nurl = "{url}"\ntimeout_ms = 5000\n[suppression]\nhash_key_env = "MAILFLOW_SUPPRESSION_KEY"\n')
        load_config(str(config_path))
        small, big = Path(scratch) / "small.txt", Path(scratch) / "big.txt"
        small.write_text("".join(f"optout{n}@dest.example\n" for n in range(10)))
        with big.open("w") as fh:
            for n in range(args.entries):
                fh.write(f"subscriber{n}@list{n % 1000}.example\n")

        def import_(path: Path, account: str) -> float:
            started = time.monotonic()
            subprocess.run([sys.executable, "-m", "mailflow", "suppress", "import", "-c", str(config_path),
                            "--account", account, str(path)], check=True, timeout=600)
            return time.monotonic() - started

        import_(small, "small.example")
        import_seconds = import_(big, "big.example")
        memory = subprocess.run(["redis-cli", "-p", str(port), "info", "memory"], capture_output=True, text=True).stdout
        used = next(int(line.split(":")[1]) for line in memory.splitlines() if line.startswith("used_memory:"))

        store, build_seconds = ready_store(url)
        unlisted = [f"reader{n * 7919 % 2_000_000}@dest{n % 97}.example" for n in range(args.lookups // 4)]
        listed = {"small.example": [f"optout{n % 10}@dest.example" for n in range(args.lookups // 4)],
                  "big.example": [f"subscriber{n * 7919 % args.entries}@list{n * 7919 % args.entries % 1000}.example"
                                  for n in range(args.lookups // 4)]}
        # Interleaved rounds, rotating order, after a warm-up: baseline (10 entries) vs 1M entries.
        lookup_latencies(store, "small.example", unlisted[:500])
        accounts = {"10_entries": "small.example", f"{args.entries}_entries": "big.example"}
        rounds: dict[str, dict[str, list[float]]] = {kind: {name: [] for name in accounts} for kind in ("unlisted", "listed")}
        for round_ in range(4):
            order = list(accounts) if round_ % 2 == 0 else list(reversed(accounts))
            for name in order:
                account = accounts[name]
                rounds["unlisted"][name] += lookup_latencies(store, account, unlisted)
                rounds["listed"][name] += lookup_latencies(store, account, listed[account])
        filter_bytes = store.replica.filter_bytes
        store.close()

    lookups: dict[str, dict[str, object]] = {}
    for kind, by_size in rounds.items():
        base, large = summary(by_size["10_entries"]), summary(by_size[f"{args.entries}_entries"])
        lookups[kind] = {"baseline_10_entries": base, "at_entries": large,
                         "p50_ratio_vs_baseline": round(large["p50_us"] / base["p50_us"], 2)}
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "import": {"entries": args.entries, "seconds": round(import_seconds, 1),
                   "entries_per_second": round(args.entries / import_seconds), "redis_used_memory_bytes": used},
        "replica": {"build_seconds": round(build_seconds, 1), "filter_bytes": filter_bytes},
        "lookup": lookups,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "suppression.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"import: {args.entries} entries into Redis in {import_seconds:.1f}s "
             f"({result['import']['entries_per_second']}/s, target < 60 s), redis memory {used / 2**20:.0f} MiB",
             f"replica: built from {args.entries + 10} entries in {build_seconds:.1f}s, filter {filter_bytes / 2**20:.1f} MiB"]
    for kind, what in (("unlisted", "answered in memory"), ("listed", "one Redis round trip")):
        figures = lookups[kind]
        at_size, at_10 = figures["at_entries"], figures["baseline_10_entries"]
        assert isinstance(at_size, dict) and isinstance(at_10, dict)
        lines.append(f"lookup, {kind} recipient ({what}): p50 {at_size['p50_us']} us at {args.entries} entries vs "
                     f"{at_10['p50_us']} us at 10 (ratio {figures['p50_ratio_vs_baseline']}), p99 {at_size['p99_us']} us")
    (RESULTS / "suppression.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
