"""Throughput through a real Postfix, and the milter alone, against baselines in the same run.

Through Postfix: smtp-source (one connection per message, 20 at once) -> a private Postfix on
loopback -> the milter -> smtp-sink. Variants: Postfix without a milter, a null pymilter, the
reference policy milter (bench/reference_milter.py: "reference" is the lean floor, which answers
nothing before end of message, and every ratio is against it; "reference_mail" is the earlier
reference, which answers MAIL through pymilter's default negotiate), mailflow on SQLite and on Redis
with rate limiting, forgery checks, suppression and the bulk gate all on and nothing refused, and
metrics on as an admin runs them ([metrics] listen, /metrics scraped every second for the whole
run; "mailflow_redis_nometrics" is the same milter with metrics off), and with `--anchors rspamd`
rspamd as a rate-limiting milter (bench/rspamd.py).
Interleaved rounds in rotating order after a warm-up; medians with min-max. Milter CPU per
message comes from /proc/PID/stat (live child processes included). The milter alone: the replay client as a load generator.

    .venv/bin/python -m bench.postfix [--messages 2000] [--rounds 9] [--anchors rspamd] [--results DIR]
    .venv/bin/python -m bench.postfix --messages 200 --rounds 1 --results /tmp/smoke   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import subprocess
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis

from bench.harness import SCRAPE_SECONDS, cpu_seconds, percentile, python_process, scraping, spread
from bench.rspamd import rspamd_available, rspamd_milter
from mailflow.milter.client import MilterClient
from tests.helpers.postfix import PrivatePostfix
from tests.helpers.servers import free_port, redis_server, write_config

RESULTS = Path(__file__).parent / "results"
KEY = "bench-suppression-key-0123456789"


def mailflow_config(store_url: str, port: int, metrics_port: int | None = None) -> dict[str, Any]:
    """Everything on, nothing refused; with `metrics_port`, /metrics and /health served there
    (the bench scrapes it every second: bench.harness.scraping)."""
    return {
        **({"metrics": {"listen": f"127.0.0.1:{metrics_port}"}} if metrics_port else {}),
        "milter": {"socket": f"inet:{port}@127.0.0.1"},
        "store": {"url": store_url, "timeout_ms": 2000},
        # smtp-source speaks plain SMTP from 127.0.0.1: charge its sender's domain, as the
        # reference milter does, rather than measure the refusal local_smtp = "refuse" gives.
        "accounts": {"local_smtp": "sender_domain"},
        "ratelimit": {"limits": ["100000000/hour"]},  # everything on, nothing refused
        "suppression": {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"},
        "log": {"level": "warning"},
    }


def smtp_source(port: int, messages: int, sessions: int) -> float:
    started = time.monotonic()
    subprocess.run(["smtp-source", "-l", "1000", "-m", str(messages), "-s", str(sessions), "-f", "a@example.com",
                    "-t", "b@example.net", f"127.0.0.1:{port}"], check=True, timeout=600,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def run_through_postfix(mta: PrivatePostfix, pid: int | None, messages: int) -> dict[str, float]:
    before_sink = mta.sink_count()
    before_cpu = cpu_seconds(pid) if pid else 0.0
    started = time.monotonic()
    accepted_seconds = smtp_source(mta.port, messages, 20)
    deadline = time.monotonic() + 300
    while mta.sink_count() < before_sink + messages and time.monotonic() < deadline:
        time.sleep(0.02)
    e2e_seconds = time.monotonic() - started
    cpu_ms = (cpu_seconds(pid) - before_cpu) * 1000 / messages if pid else 0.0
    return {"accepted_per_s": messages / accepted_seconds, "e2e_per_s": messages / e2e_seconds, "cpu_ms_per_msg": cpu_ms}


def milter_alone(socket: str, messages: int, concurrency: int, rate: float | None = None,
                 accounts: int = 0, samples: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """Sessions through the milter protocol; per-stage latency in ms. `rate` paces messages/s;
    `accounts` spreads the messages over that many authenticated accounts (acctN.example), each
    message with a sender address of its own. `samples`, if given, receives every latency by stage."""
    stages: dict[str, list[float]] = {"mail": [], "rcpt": [], "eom": []} if samples is None else samples
    for stage in ("mail", "rcpt", "eom"):
        stages.setdefault(stage, [])
    lock = threading.Lock()
    counter = iter(range(messages))
    started = time.monotonic()

    def worker() -> None:
        for n in counter:
            if rate:
                delay = started + n / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            sender, macros = "a@example.com", None
            if accounts:  # a From: line never seen before, whatever the number of accounts
                domain = f"acct{n * 7919 % accounts}.example"
                sender, macros = f"user{n}@{domain}", {"{auth_authen}": domain}
            with MilterClient(socket) as c:
                c.connect("mua.example", "127.0.0.1", 40000)
                t0 = time.perf_counter()
                c.mail(sender, macros=macros)
                t1 = time.perf_counter()
                c.rcpt("b@example.net")
                t2 = time.perf_counter()
                c.header("From", sender)
                c.header("Subject", "bench")
                c.eoh()
                t3 = time.perf_counter()
                c.eom()
                t4 = time.perf_counter()
            with lock:
                stages["mail"].append((t1 - t0) * 1000)
                stages["rcpt"].append((t2 - t1) * 1000)
                stages["eom"].append((t4 - t3) * 1000)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    seconds = time.monotonic() - started
    return {"decisions_per_s": round(messages / seconds, 1),
            **{f"{stage}_p50_ms": round(percentile(v, 0.5), 3) for stage, v in stages.items()},
            **{f"{stage}_p99_ms": round(percentile(v, 0.99), 3) for stage, v in stages.items()}}


def paired(runs: dict[str, list[dict[str, float]]], name: str, base: str) -> dict[str, dict[str, float]]:
    """Ratios of one variant to another, round by round (both ran back to back in each round)."""
    pairs = list(zip(runs[name], runs[base]))
    return {"accepted": spread([r["accepted_per_s"] / b["accepted_per_s"] for r, b in pairs]),
            "cpu": spread([r["cpu_ms_per_msg"] / b["cpu_ms_per_msg"] for r, b in pairs])}


def commandstats(client: redis.Redis) -> int:
    return sum(int(v["calls"]) for k, v in client.info("commandstats").items() if k != "cmdstat_info")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per variant and round (at least 20)")
    parser.add_argument("--rounds", type=int, default=9)  # this noisy 2-core kind of machine needs 9
    parser.add_argument("--anchors", default="", help="comma-separated optional anchors: rspamd")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"where the results go (default {RESULTS})")
    args = parser.parse_args()
    if args.messages < 20 or args.rounds < 1:
        parser.error("--messages must be at least 20 (one per session) and --rounds at least 1")
    anchors = {a for a in args.anchors.replace(",", " ").split()}
    if anchors - {"rspamd"}:
        parser.error(f"unknown anchor(s): {', '.join(sorted(anchors - {'rspamd'}))} (known: rspamd)")
    if "rspamd" in anchors and not rspamd_available():
        parser.error("rspamd is not installed (make bench ANCHORS=rspamd installs it)")
    os.environ["MAILFLOW_SUPPRESSION_KEY"] = KEY
    scratch = Path(tempfile.mkdtemp(prefix="mailflow-bench-"))
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "platform": platform.platform()}, "messages": args.messages}
    with redis_server(scratch) as (redis_url, redis_port):
        ports = {name: free_port() for name in ("null", "reference", "reference_mail", "mailflow_sqlite", "mailflow_redis",
                                                "mailflow_redis_nometrics", "metrics_sqlite", "metrics_redis")}
        # mailflow as an admin runs it: metrics on, scraped every second (the nometrics row: off).
        cfg_sqlite = write_config(scratch / "sqlite.toml", mailflow_config(
            f"sqlite://{scratch}/state.db", ports["mailflow_sqlite"], ports["metrics_sqlite"]))
        cfg_redis = write_config(scratch / "redis.toml", mailflow_config(redis_url, ports["mailflow_redis"],
                                                                         ports["metrics_redis"]))
        cfg_nometrics = write_config(scratch / "nometrics.toml", mailflow_config(redis_url,
                                                                                 ports["mailflow_redis_nometrics"]))
        for cfg in (cfg_sqlite, cfg_redis):  # a few entries, so the suppression lookups do real work
            subprocess.run([sys.executable, "-m", "mailflow", "suppress", "add", "-c", str(cfg),
                            *(f"optout{n}@example.net" for n in range(10))], check=True, capture_output=True)
        with ExitStack() as stack:
            null = stack.enter_context(python_process("bench.null_milter", str(ports["null"]), port=ports["null"]))
            ref = stack.enter_context(python_process("bench.reference_milter", str(ports["reference"]), redis_url,
                                                     "lean", port=ports["reference"]))
            ref_mail = stack.enter_context(python_process("bench.reference_milter", str(ports["reference_mail"]),
                                                          redis_url, "mail", port=ports["reference_mail"]))
            mf_sqlite = stack.enter_context(python_process("mailflow", "run", "-c", str(cfg_sqlite),
                                                           port=ports["mailflow_sqlite"]))
            mf_redis = stack.enter_context(python_process("mailflow", "run", "-c", str(cfg_redis),
                                                          port=ports["mailflow_redis"]))
            mf_nometrics = stack.enter_context(python_process("mailflow", "run", "-c", str(cfg_nometrics),
                                                              port=ports["mailflow_redis_nometrics"]))
            scrapes = {name: stack.enter_context(scraping(ports[f"metrics_{name}"])) for name in ("sqlite", "redis")}
            pids = {"postfix_only": None, "null_milter": null.pid, "reference": ref.pid, "reference_mail": ref_mail.pid,
                    "mailflow_sqlite": mf_sqlite.pid, "mailflow_redis": mf_redis.pid,
                    "mailflow_redis_nometrics": mf_nometrics.pid}
            milter_ports = {"postfix_only": None, "null_milter": ports["null"], "reference": ports["reference"],
                            "reference_mail": ports["reference_mail"], "mailflow_sqlite": ports["mailflow_sqlite"],
                            "mailflow_redis": ports["mailflow_redis"],
                            "mailflow_redis_nometrics": ports["mailflow_redis_nometrics"]}
            if "rspamd" in anchors:
                milter_ports["rspamd"], pids["rspamd"] = stack.enter_context(rspamd_milter(scratch, redis_port))
            mtas = {name: PrivatePostfix(port, sink_dump=False).start() for name, port in milter_ports.items()}
            try:
                for name, mta in mtas.items():  # warm-up
                    run_through_postfix(mta, pids[name], 200)
                runs: dict[str, list[dict[str, float]]] = {name: [] for name in mtas}
                names = list(mtas)
                for round_ in range(args.rounds):
                    order = names[round_ % len(names):] + names[:round_ % len(names)]
                    for name in order:
                        runs[name].append(run_through_postfix(mtas[name], pids[name], args.messages))
                        print(f"round {round_ + 1} {name}: {runs[name][-1]}", flush=True)
            finally:
                for mta in mtas.values():
                    mta.stop()
            through = {name: {metric: spread([r[metric] for r in rs]) for metric in rs[0]} for name, rs in runs.items()}
            med = {name: {m: v["median"] for m, v in metrics.items()} for name, metrics in through.items()}
            results["through_postfix"] = through
            results["rounds"] = runs
            # Paired by round (each round runs every variant back to back): steadier on a noisy machine.
            compared = [name for name in ("mailflow_sqlite", "mailflow_redis", "mailflow_redis_nometrics", "null_milter",
                                          "reference_mail", "rspamd")
                        if name in runs]
            results["paired_vs_reference"] = {name: paired(runs, name, "reference") for name in compared}
            # Against the earlier reference too, to compare with figures measured before the lean floor.
            results["paired_vs_reference_mail"] = {name: paired(runs, name, "reference_mail")
                                                   for name in ("mailflow_sqlite", "mailflow_redis")}
            # What metrics cost: the same milter with and without them, round by round.
            results["paired_metrics_on_vs_off"] = paired(runs, "mailflow_redis", "mailflow_redis_nometrics")
            results["metrics"] = {"scrape_seconds": SCRAPE_SECONDS, "scrapes": {name: n[0] for name, n in scrapes.items()}}
            bases = ["postfix_only", "null_milter", "reference", "reference_mail"]
            if "rspamd" in runs:
                bases.append("rspamd")
                results["paired_vs_rspamd"] = {name: paired(runs, name, "rspamd")
                                               for name in ("mailflow_sqlite", "mailflow_redis", "reference", "reference_mail")}
            results["ratios"] = {
                name: {"accepted_vs_" + base: round(med[name]["accepted_per_s"] / med[base]["accepted_per_s"], 3)
                       for base in bases if base != name}
                | {f"cpu_vs_{base}": round(med[name]["cpu_ms_per_msg"] / med[base]["cpu_ms_per_msg"], 2)
                   for base in ("reference", "reference_mail", "rspamd")
                   if base in med and base != name and med[base]["cpu_ms_per_msg"]}
                for name in compared}

            # The milter alone, and store round trips per message (Redis commandstats).
            client = redis.Redis.from_url(redis_url)
            alone: dict[str, Any] = {}
            for name in ("reference", "reference_mail", "mailflow_redis"):
                before = commandstats(client)
                alone[name] = milter_alone(f"inet:{milter_ports[name]}@127.0.0.1", args.messages, 20)
                alone[name]["redis_commands_per_msg"] = round((commandstats(client) - before) / args.messages, 2)
                alone[name]["paced_200_per_s"] = milter_alone(f"inet:{milter_ports[name]}@127.0.0.1", args.messages, 20, rate=200)
            results["milter_alone"] = alone
            client.close()
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "postfix.json").write_text(json.dumps(results, indent=2) + "\n")
    summarise(results, args.results)


def summarise(results: dict[str, Any], out: Path = RESULTS) -> None:
    through = results["through_postfix"]
    scraped = results.get("metrics")  # results from before metrics were on in the bench have none
    lines = [f"{results['messages']} messages x rounds through Postfix (median, min-max)"
             + (f"; mailflow with metrics on, scraped every {scraped['scrape_seconds']:g} s "
                "(mailflow_redis_nometrics: off):" if scraped else ":")]
    for name, metrics in through.items():
        acc, cpu = metrics["accepted_per_s"], metrics["cpu_ms_per_msg"]
        lines.append(f"  {name:<24} accepted {acc['median']:7.1f} msg/s ({acc['min']:.0f}-{acc['max']:.0f})  "
                     f"e2e {metrics['e2e_per_s']['median']:7.1f} msg/s  milter CPU {cpu['median']:.2f} ms/msg")
    for name, ratios in results["ratios"].items():
        lines.append(f"  {name:<24} " + "  ".join(f"{k} {v}" for k, v in ratios.items()))
    for base in ("reference", "reference_mail", "rspamd"):
        for name, pair in results.get(f"paired_vs_{base}", {}).items():
            acc, cpu = pair["accepted"], pair["cpu"]
            lines.append(f"  {name:<24} per round vs {base}: throughput {acc['median']:.3f} ({acc['min']:.2f}-{acc['max']:.2f}), "
                         f"CPU {cpu['median']:.2f} ({cpu['min']:.2f}-{cpu['max']:.2f})")
    if "paired_metrics_on_vs_off" in results:
        acc, cpu = results["paired_metrics_on_vs_off"]["accepted"], results["paired_metrics_on_vs_off"]["cpu"]
        lines.append(f"  metrics on vs off (mailflow_redis per round): throughput {acc['median']:.3f} "
                     f"({acc['min']:.2f}-{acc['max']:.2f}), CPU {cpu['median']:.2f} ({cpu['min']:.2f}-{cpu['max']:.2f})")
    for name, alone in results["milter_alone"].items():
        paced = alone["paced_200_per_s"]
        lines.append(f"  milter alone {name:<24} {alone['decisions_per_s']} decisions/s, eom p50 {alone['eom_p50_ms']} ms "
                     f"p99 {alone['eom_p99_ms']} ms; at 200 msg/s eom p99 {paced['eom_p99_ms']} ms; "
                     f"redis commands/msg {alone['redis_commands_per_msg']}")
    text = "\n".join(lines)
    (out / "postfix.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
