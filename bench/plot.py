"""Plot bench/results/postfix.json: throughput and milter CPU per message, medians with min-max.

    .venv/bin/python -m bench.plot      # writes bench/results/postfix.png
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    data = json.loads((RESULTS / "postfix.json").read_text())["through_postfix"]
    names = list(data)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, metric, title in ((left, "accepted_per_s", "accepted messages/s (higher is better)"),
                                (right, "cpu_ms_per_msg", "milter CPU ms per message (lower is better)")):
        medians = [data[n][metric]["median"] for n in names]
        low = [m - data[n][metric]["min"] for n, m in zip(names, medians)]
        high = [data[n][metric]["max"] - m for n, m in zip(names, medians)]
        axis.bar(names, medians, yerr=[low, high], capsize=4,
                 color=["#999999", "#bbbbbb", "#4477aa", "#aaccee", "#66ccee", "#228833", "#ee6677"][: len(names)])
        axis.set_title(title, fontsize=10)
        axis.tick_params(axis="x", labelrotation=25, labelsize=8)
    fig.suptitle("Through a private Postfix: smtp-source -> Postfix -> milter -> smtp-sink (median, min-max)", fontsize=10)
    fig.tight_layout()
    fig.savefig(RESULTS / "postfix.png", dpi=110)
    print(f"wrote {RESULTS / 'postfix.png'}")


if __name__ == "__main__":
    main()
