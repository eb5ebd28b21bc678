"""DNSBL poll speed: 256 IPs x 8 zones against a loopback DNS server this script starts.

Reports the wall time of one full poll (self-tests included) next to a baseline measured in the
same run: the same number of bare dnspython queries, one after another awaited in batches of the
configured concurrency, with no mailflow logic. Target: under 5 seconds.

    .venv/bin/python -m bench.rbl [--ips 256] [--zones 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import dns.asyncresolver

from mailflow.rbl.query import make_resolver, poll
from mailflow.rbl.zones import Zone
from tests.helpers.dns_server import dns_server

RESULTS = Path(__file__).parent / "results"


async def bare_queries(resolver: dns.asyncresolver.Resolver, names: list[str], concurrency: int) -> None:
    slots = asyncio.Semaphore(concurrency)

    async def one(name: str) -> None:
        async with slots:
            try:
                await resolver.resolve(name, "A", raise_on_no_answer=False)
            except dns.resolver.NXDOMAIN:
                pass

    await asyncio.gather(*(one(n) for n in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ips", type=int, default=256)
    parser.add_argument("--zones", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    ips = [f"10.{n // 65536}.{n // 256 % 256}.{n % 256}" for n in range(args.ips)]
    zones = [Zone(f"bl{z}.bench.test", {"127.0.0.2": "listed"}) for z in range(args.zones)]
    with dns_server() as server:
        for zone in zones:
            server.records[zone.query_name("127.0.0.2").lower()] = {"A": ["127.0.0.2"]}
            for ip in ips[::16]:  # one in sixteen listed, with a reason
                server.records[zone.query_name(ip).lower()] = {"A": ["127.0.0.2"], "TXT": ["bench listing"]}
        resolver = make_resolver([("127.0.0.1", server.server_address[1])], 2.0)
        names = [z.query_name(ip) for z in zones for ip in ips]
        timings: dict[str, list[float]] = {"baseline_bare_queries": [], "mailflow_poll": []}
        asyncio.run(bare_queries(resolver, names[:200], args.concurrency))  # warm-up
        for round_ in range(args.rounds):
            order = list(timings) if round_ % 2 == 0 else list(reversed(timings))
            for name in order:
                started = time.monotonic()
                if name == "mailflow_poll":
                    result = asyncio.run(poll(ips, zones, resolver, args.concurrency))
                    assert all(not z.blind for z in result.zones)
                else:
                    asyncio.run(bare_queries(resolver, names, args.concurrency))
                timings[name].append(time.monotonic() - started)
    medians = {k: statistics.median(v) for k, v in timings.items()}
    report = {
        "ips": args.ips, "zones": args.zones, "queries_per_poll": len(names), "concurrency": args.concurrency,
        "seconds": {k: {"median": round(medians[k], 3), "min": round(min(v), 3), "max": round(max(v), 3)} for k, v in timings.items()},
        "ratio_poll_vs_baseline": round(medians["mailflow_poll"] / medians["baseline_bare_queries"], 2),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rbl.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.ips} IPs x {args.zones} zones: mailflow poll {medians['mailflow_poll']:.2f}s "
          f"(target < 5 s) vs {medians['baseline_bare_queries']:.2f}s of bare queries: ratio {report['ratio_poll_vs_baseline']}")


if __name__ == "__main__":
    main()
