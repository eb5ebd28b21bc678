"""Suppression benchmark: import 1,000,000 addresses into Redis with the CLI, then compare the
RCPT lookup latency at 1,000,000 entries with the same lookup at 10 entries (the baseline,
measured in the same run). Everything runs against a redis-server this script starts on
loopback and stops by pid; every loop is bounded.

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
from mailflow.store import open_store
from mailflow.suppression.entries import GLOBAL, Matcher, scope_for
from mailflow.suppression.keys import Keyring
from mailflow.suppression.normalize import AddressForms
from tests.helpers.servers import redis_server

RESULTS = Path(__file__).parent / "results"
KEY = "bench-suppression-key-0123456789"


def lookup_latencies(url: str, account: str, lookups: int) -> list[float]:
    """Microseconds per RCPT check (one round trip: both scopes and the hold flag)."""
    store = open_store(url, timeout_ms=2000)
    matcher = Matcher(AddressForms(), Keyring(KEY.encode()))
    scopes = [GLOBAL, scope_for(account)]
    samples = []
    deadline = time.monotonic() + 120
    for n in range(lookups):
        keys = matcher.recipient_keys(f"reader{n * 7919 % 2_000_000}@dest{n % 97}.example")
        started = time.perf_counter()
        store.find_suppressions(account, scopes, keys)
        samples.append((time.perf_counter() - started) * 1e6)
        if time.monotonic() > deadline:
            break
    store.close()
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

        # Interleaved rounds, rotating order, after a warm-up: baseline (10 entries) vs 1M entries.
        lookup_latencies(url, "small.example", 500)
        rounds: dict[str, list[float]] = {"10_entries": [], f"{args.entries}_entries": []}
        for round_ in range(4):
            order = list(rounds) if round_ % 2 == 0 else list(reversed(rounds))
            for name in order:
                account = "small.example" if name == "10_entries" else "big.example"
                rounds[name] += lookup_latencies(url, account, args.lookups // 4)

    base, large = summary(rounds["10_entries"]), summary(rounds[f"{args.entries}_entries"])
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "import": {"entries": args.entries, "seconds": round(import_seconds, 1),
                   "entries_per_second": round(args.entries / import_seconds), "redis_used_memory_bytes": used},
        "lookup": {"baseline_10_entries": base, "at_entries": large,
                   "p50_ratio_vs_baseline": round(large["p50_us"] / base["p50_us"], 2)},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "suppression.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"import: {args.entries} entries into Redis in {import_seconds:.1f}s "
          f"({result['import']['entries_per_second']}/s, target < 60 s), redis memory {used / 2**20:.0f} MiB")
    print(f"lookup (one round trip per RCPT): p50 {large['p50_us']} us at {args.entries} entries vs "
          f"{base['p50_us']} us at 10 (ratio {result['lookup']['p50_ratio_vs_baseline']}), p99 {large['p99_us']} us")


if __name__ == "__main__":
    main()
