"""Store round trips per message, by kind of message: mailflow on Redis, the milter alone.

Redis counts every read event on a client socket (`total_reads_processed` in INFO stats): with
the milter's small requests that is one per round trip, a pipeline included. Its commands
(`total_commands_processed`, the calls inside a Lua script included, as in INFO commandstats)
are given beside it. Messages go one at a time, so nothing overlaps; the suppression replica's
refresh (one read a second) and this script's own INFO calls are in the counts and make up the
thousandths.

    .venv/bin/python -m bench.roundtrips [--messages 500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.harness import python_process
from bench.postfix import KEY, RESULTS, mailflow_config
from mailflow.milter.client import MilterClient
from tests.helpers.servers import free_port, redis_server, write_config

LISTED = "optout@example.net"
LOGIN = {"{auth_authen}": "shop.example"}
# name: (client address, login macros, recipients, what the design promises)
SHAPES: dict[str, tuple[str, dict[str, str] | None, list[str], str]] = {
    "inbound": ("203.0.113.7", None, ["b@example.net"], "none"),
    "outbound_1_recipient": ("198.51.100.20", LOGIN, ["b@example.net"], "one: the debit at end of message"),
    "outbound_5_recipients": ("198.51.100.20", LOGIN, [f"r{n}@example.net" for n in range(5)],
                              "one: unlisted recipients are answered by the in-memory replica"),
    "outbound_1_listed_1_not": ("198.51.100.20", LOGIN, [LISTED, "b@example.net"],
                                "two: the listed recipient's lookup, and the debit"),
}


def counters(client: redis.Redis) -> tuple[int, int]:
    stats = client.info("stats")
    return int(stats["total_reads_processed"]), int(stats["total_commands_processed"])


def send(socket: str, address: str, macros: dict[str, str] | None, recipients: list[str]) -> None:
    with MilterClient(socket) as c:
        c.connect("client.example", address, 40000)
        c.mail("news@shop.example", macros=macros)
        for recipient in recipients:
            c.rcpt(recipient)
        c.header("From", "news@shop.example")
        c.eoh()
        c.eom()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    args = parser.parse_args()
    os.environ["MAILFLOW_SUPPRESSION_KEY"] = KEY
    scratch = Path(tempfile.mkdtemp(prefix="mailflow-roundtrips-"))
    results: dict[str, Any] = {"messages": args.messages}
    with redis_server(scratch) as (redis_url, _):
        port = free_port()
        config = write_config(scratch / "redis.toml", mailflow_config(redis_url, port))
        subprocess.run([sys.executable, "-m", "mailflow", "suppress", "add", "-c", str(config), LISTED],
                       check=True, capture_output=True)
        client = redis.Redis.from_url(redis_url)
        with python_process("mailflow", "run", "-c", str(config), port=port):
            socket = f"inet:{port}@127.0.0.1"
            send(socket, *SHAPES["outbound_1_recipient"][:3])  # the replica starts at the first lookup
            time.sleep(2)  # and is built within its first refresh
            for name, (address, macros, recipients, promise) in SHAPES.items():
                reads, commands = counters(client)
                for _ in range(args.messages):
                    send(socket, address, macros, recipients)
                after_reads, after_commands = counters(client)
                results[name] = {"round_trips_per_msg": round((after_reads - reads) / args.messages, 3),
                                 "commands_per_msg": round((after_commands - commands) / args.messages, 3),
                                 "recipients": len(recipients), "design": promise}
        client.close()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "roundtrips.json").write_text(json.dumps(results, indent=2) + "\n")
    for name, figures in results.items():
        if isinstance(figures, dict):
            print(f"{name:<26} {figures['round_trips_per_msg']:6.3f} round trips/msg  "
                  f"{figures['commands_per_msg']:6.2f} commands/msg  (design: {figures['design']})")


if __name__ == "__main__":
    main()
