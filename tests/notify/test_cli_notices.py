"""`mailflow account hold/release` send their notices before they exit, and a webhook that is
down costs the admin a bounded wait and one line, never the command."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.servers import write_config
from tests.helpers.webhook_receiver import SECRET, WebhookReceiver


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailflow", *args, "-c", str(config)], capture_output=True,
                          text=True, timeout=60)


def test_hold_and_release_are_notified(tmp_path: Path, secret_file: Path, receiver: WebhookReceiver) -> None:
    config = write_config(tmp_path / "mailflow.toml", {
        "store": {"url": f"sqlite://{tmp_path}/state.db"},
        "notify": {"webhook": receiver.url, "webhook_secret_file": str(secret_file)}})
    assert run(config, "account", "hold", "--reason", "phishing kit", "Shop.Example").returncode == 0
    assert run(config, "account", "release", "shop.example").returncode == 0
    assert run(config, "account", "release", "shop.example").returncode == 1  # not held: no notice
    [held, released] = receiver.events(SECRET)
    assert (held["event"], held["account"], held["detail"]["reason"], held["detail"]["by"]) == (
        "account_held", "shop.example", "phishing kit", "admin")
    assert held["detail"]["user"] and released["event"] == "account_released"


def test_a_webhook_that_is_down_costs_a_bounded_wait_and_one_line(tmp_path: Path, secret_file: Path) -> None:
    receiver = WebhookReceiver(answers=["503"])
    config = write_config(tmp_path / "mailflow.toml", {
        "store": {"url": f"sqlite://{tmp_path}/state.db"},
        "notify": {"webhook": receiver.url, "webhook_secret_file": str(secret_file), "webhook_backoff_ms": 200,
                   "webhook_max_seconds": 1}})
    try:
        started = time.monotonic()
        result = run(config, "account", "hold", "shop.example")
        took = time.monotonic() - started
    finally:
        receiver.close()
    assert result.returncode == 0 and result.stdout == "account shop.example: held\n"
    assert took < 10 and len(receiver.received) == 3  # at 0, 0.2 and 0.6 s; 1.4 s is past the budget
    assert result.stderr.count("\n") == 1 and "webhook gave up on" in result.stderr and "HTTP 503" in result.stderr
