"""mailflow from several source trees through Postfix, paired round by round against the reference.

What a change cost, measured in one run: check the old commit out beside this one
(`git worktree add /tmp/before COMMIT`), then

    python -m bench.trees before=/tmp/before now=.:metrics now_off=.

`NAME=ROOT` runs `python -m mailflow run` from ROOT (its own code) on the bench's config;
`:metrics` turns `[metrics] listen` on and scrapes it every second, as `make bench` does. Each
round runs every variant once, in a rotated order; the ratios are per round against the lean
reference (bench/reference_milter.py) run in the same round. Loopback only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack, nullcontext
from pathlib import Path

from bench.harness import python_process, scraping, spread
from bench.postfix import KEY, mailflow_config, paired, run_through_postfix
from tests.helpers.postfix import PrivatePostfix
from tests.helpers.servers import free_port, redis_server, wait_for_port, write_config


def parse_variant(text: str) -> tuple[str, Path, bool]:
    name, sep, spec = text.partition("=")
    root, _, option = spec.partition(":")
    if not sep or not name or name == "reference" or option not in ("", "metrics"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=ROOT or NAME=ROOT:metrics")
    if not (Path(root) / "mailflow" / "__main__.py").is_file():
        raise argparse.ArgumentTypeError(f"{root!r} is not a mailflow source tree")
    return name, Path(root).resolve(), option == "metrics"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("variants", nargs="+", type=parse_variant, metavar="NAME=ROOT[:metrics]")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    if args.messages < 20 or not 1 <= args.rounds <= 50:
        parser.error("--messages must be at least 20 and --rounds between 1 and 50")
    os.environ["MAILFLOW_SUPPRESSION_KEY"] = KEY
    scratch = Path(tempfile.mkdtemp(prefix="mailflow-trees-"))
    with redis_server(scratch) as (url, _), ExitStack() as stack:
        ports = {"reference": free_port()}
        pids = {"reference": stack.enter_context(python_process(
            "bench.reference_milter", str(ports["reference"]), url, "lean", port=ports["reference"])).pid}
        scraped: dict[str, int] = {}
        for name, root, metrics in args.variants:
            ports[name] = free_port()
            if metrics:
                scraped[name] = free_port()
            config = write_config(scratch / f"{name}.toml", mailflow_config(url, ports[name], scraped.get(name)))
            subprocess.run([sys.executable, "-m", "mailflow", "suppress", "add", "-c", str(config),
                            *(f"optout{n}@example.net" for n in range(10))], check=True, capture_output=True, cwd=root)
            pids[name] = stack.enter_context(python_process("mailflow", "run", "-c", str(config), port=ports[name],
                                                            cwd=root)).pid
        mtas = {name: PrivatePostfix(port, sink_dump=False).start() for name, port in ports.items()}
        for mta in mtas.values():
            stack.callback(mta.stop)
        names = list(mtas)
        for name in names:  # warm up: caches, connections, Postfix's own processes
            run_through_postfix(mtas[name], pids[name], 200)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for round_no in range(args.rounds):
            for name in names[round_no % len(names):] + names[:round_no % len(names)]:
                with scraping(scraped[name]) if name in scraped else nullcontext([0]):
                    runs[name].append(run_through_postfix(mtas[name], pids[name], args.messages))
            print(f"round {round_no + 1}: " + "  ".join(
                f"{n} {runs[n][-1]['accepted_per_s']:.0f}/s {runs[n][-1]['cpu_ms_per_msg']:.3f} ms" for n in names),
                flush=True)
    for name in names[1:]:
        ratios = paired(runs, name, "reference")
        print(f"{name:<16} per round vs reference: throughput {ratios['accepted']['median']:.3f} "
              f"({ratios['accepted']['min']:.2f}-{ratios['accepted']['max']:.2f}), CPU {ratios['cpu']['median']:.3f} "
              f"({ratios['cpu']['min']:.2f}-{ratios['cpu']['max']:.2f}); "
              f"CPU {spread([r['cpu_ms_per_msg'] for r in runs[name]])['median']:.3f} ms/msg")
    print(f"{'reference':<16} CPU {spread([r['cpu_ms_per_msg'] for r in runs['reference']])['median']:.3f} ms/msg")


if __name__ == "__main__":
    main()
