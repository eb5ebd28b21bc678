"""Where each milter's Python time goes while a real Postfix drives it: py-spy, mailflow vs the reference.

"reference" is the lean floor (bench/reference_milter.py: nothing answered before end of message),
"reference_mail" the earlier reference that answers MAIL through pymilter's default negotiate.
mailflow runs as the bench runs it: metrics on, /metrics scraped every second.

`py-spy record --gil --nonblocking` samples, 1000 times a second and without pausing the milter,
the thread holding the GIL: one sample is about a millisecond of Python running, so samples per
message read as Python milliseconds per message, per milter callback and per function. Samples
with no Python frame (libmilter and pymilter's C glue, or a thread at the instant it hands the
GIL over) are counted apart and not attributed. The raw stacks stay in
bench/results/profile-NAME.raw.txt (py-spy's raw format: flamegraph.pl and speedscope read it).

    .venv/bin/python -m bench.profile [--messages 3000] [--results DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.harness import SCRAPE_SECONDS, children, python_process, scraping
from bench.postfix import KEY, RESULTS, mailflow_config, run_through_postfix
from tests.helpers.postfix import PrivatePostfix
from tests.helpers.servers import free_port, redis_server, write_config

SAMPLES_PER_SECOND = 1000
# pymilter calls these Milter.Base methods (or their *_bytes / *_callback forms) per SMTP stage.
CALLBACKS = ("negotiate", "connect", "envfrom", "envrcpt", "header", "eom", "abort", "close")
NO_FRAME = "(no Python frame)"
NAMES = ("reference", "reference_mail", "mailflow_redis")


def function_of(frame: str) -> str:
    """`Engine.rcpt (mailflow/engine.py:97)` -> `Engine.rcpt (mailflow/engine.py)`: lines merged."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    return f"{name} ({path.split('site-packages/')[-1]})" if path else name


def callback_of(frames: list[str]) -> str:
    for frame in frames:
        method = frame.split(" (")[0].rsplit(".", 1)[-1].removesuffix("_bytes").removesuffix("_callback")
        if method in CALLBACKS:
            return method
    return "other" if frames else NO_FRAME


def read_stacks(path: Path) -> list[tuple[list[str], int]]:
    """py-spy raw output: one line per distinct stack, `root;...;leaf COUNT`."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        stacks.append(([frame for frame in stack.split(";") if frame], int(count)))
    return stacks


def summarise_stacks(stacks: list[tuple[list[str], int]], messages: int, top: int = 15) -> dict[str, Any]:
    per_message = 1000 / SAMPLES_PER_SECOND / messages  # samples -> ms per message
    by_callback: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        by_callback[callback_of(frames)] += count
        if frames:
            own[function_of(frames[-1])] += count
            for function in {function_of(frame) for frame in frames}:
                inclusive[function] += count
    python = sum(count for frames, count in stacks if frames)
    return {
        "python_ms_per_msg": round(python * per_message, 4),
        "unattributed_ms_per_msg": round(by_callback[NO_FRAME] * per_message, 4),
        "by_callback_ms_per_msg": {name: round(n * per_message, 4) for name, n in by_callback.most_common()
                                   if name != NO_FRAME},
        "top_own_ms_per_msg": {name: round(n * per_message, 4) for name, n in own.most_common(top)},
        "top_inclusive_ms_per_msg": {name: round(n * per_message, 4) for name, n in inclusive.most_common(top)
                                     if "mailflow/" in name or "bench/" in name},
    }


def profile(mta: PrivatePostfix, pid: int, messages: int, raw: Path) -> dict[str, Any]:
    run_through_postfix(mta, pid, 200)  # warm-up
    worker = (children(pid) or [pid])[0]  # `mailflow run` serves in a forked worker
    spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
                            "--pid", str(worker), "--gil", "--nonblocking", "--rate", str(SAMPLES_PER_SECOND),
                            "--format", "raw", "--output", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        measured = run_through_postfix(mta, pid, messages)
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
        _, errors = spy.communicate(timeout=60)
    if not raw.exists():
        raise SystemExit(f"py-spy wrote no profile: {errors.decode(errors='replace').strip()}")
    return {**measured, **summarise_stacks(read_stacks(raw), messages)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"where the results go (default {RESULTS})")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("py-spy needs root to read another process's memory")
    os.environ["MAILFLOW_SUPPRESSION_KEY"] = KEY
    scratch = Path(tempfile.mkdtemp(prefix="mailflow-profile-"))
    args.results.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"messages": args.messages, "samples_per_second": SAMPLES_PER_SECOND,
                               "scrape_seconds": SCRAPE_SECONDS}
    with redis_server(scratch) as (redis_url, _), ExitStack() as stack:
        ports = {name: free_port() for name in NAMES}
        metrics_port = free_port()  # as the bench runs it: metrics on, scraped every second
        config = write_config(scratch / "redis.toml", mailflow_config(redis_url, ports["mailflow_redis"], metrics_port))
        milters = {
            **{name: stack.enter_context(python_process("bench.reference_milter", str(ports[name]), redis_url, variant,
                                                        port=ports[name]))
               for name, variant in (("reference", "lean"), ("reference_mail", "mail"))},
            "mailflow_redis": stack.enter_context(python_process("mailflow", "run", "-c", str(config),
                                                                 port=ports["mailflow_redis"])),
        }
        stack.enter_context(scraping(metrics_port))
        for name, proc in milters.items():
            mta = PrivatePostfix(ports[name], sink_dump=False).start()
            try:
                results[name] = profile(mta, proc.pid, args.messages, args.results / f"profile-{name}.raw.txt")
            finally:
                mta.stop()
    (args.results / "profile.json").write_text(json.dumps(results, indent=2) + "\n")
    report(results, args.results)


def report(results: dict[str, Any], out: Path = RESULTS) -> None:
    names = [name for name in NAMES if name in results]  # profiles made before reference_mail lack it
    scraped = f", mailflow with metrics on, scraped every {results['scrape_seconds']:g} s" if "scrape_seconds" in results else ""
    lines = [f"py-spy --gil, {results['messages']} messages through Postfix{scraped}: Python ms per message",
             f"  {'':<22}" + "".join(f"{name:>16}" for name in names)]
    for key in ("python_ms_per_msg", "unattributed_ms_per_msg", "cpu_ms_per_msg"):
        lines.append(f"  {key:<22}" + "".join(f"{results[name][key]:>16.3f}" for name in names))
    lines.append("  by callback:")
    for callback in (*CALLBACKS, "other"):
        values = [results[name]["by_callback_ms_per_msg"].get(callback, 0.0) for name in names]
        if any(values):
            lines.append(f"    {callback:<20}" + "".join(f"{value:>16.3f}" for value in values))
    lines.append("  mailflow, inclusive (mailflow code):")
    lines += [f"    {ms:6.3f}  {name}" for name, ms in results["mailflow_redis"]["top_inclusive_ms_per_msg"].items()]
    lines.append("  mailflow, own time:")
    lines += [f"    {ms:6.3f}  {name}" for name, ms in results["mailflow_redis"]["top_own_ms_per_msg"].items()]
    text = "\n".join(lines)
    (out / "profile.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
