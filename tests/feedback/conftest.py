"""What the follower tests share: a config on a real store, a Postfix log written line by line
the way syslog writes it, and the totals the store holds."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import tomli_w

from mailflow.config import Config, load_config
from mailflow.feedback.model import FIELDS
from mailflow.store.base import Store

ACCOUNTS = ("shop.example", "lists.example")


def write_config(tmp_path: Path, store_url: str, log: Path, **extra: Any) -> Path:
    data: dict[str, Any] = {"store": {"url": store_url, "timeout_ms": 1000},
                            "suppression": {"hash_key_env": "MAILFLOW_SUPPRESSION_KEY"},
                            "log": {"target": "stderr"}, "feedback": {"log": str(log)}, **extra}
    path = tmp_path / "mailflow.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def config_for(tmp_path: Path, store_url: str, log: Path) -> Config:
    return load_config(str(write_config(tmp_path, store_url, log)))


class MailLog:
    """A Postfix log: each message an smtpd line (the SASL login), qmgr's from=, one delivery
    line and `removed`, RFC 3339 stamps of the last minutes. `expected` counts what a follower
    that reads every line exactly once must have stored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.n = 0
        self.expected: Counter[tuple[str, str]] = Counter()  # (account, field) -> n
        self.at = time.time() - 120
        path.touch()

    def lines(self, count: int, bounce_every: int = 5) -> list[str]:
        """`count` messages' lines: accounts alternate, every `bounce_every`-th recipient bounces 5.1.1."""
        out: list[str] = []
        for _ in range(count):
            self.n += 1
            n, account = self.n, ACCOUNTS[self.n % len(ACCOUNTS)]
            qid = f"4Q{n:010X}"
            stamp = datetime.fromtimestamp(self.at + n * 0.001, timezone.utc).isoformat(timespec="microseconds")
            host = f"{stamp} mx postfix"
            out += [f"{host}/smtpd[11]: {qid}: client=mua.example[198.51.100.1], sasl_method=PLAIN, "
                    f"sasl_username=user@{account}",
                    f"{host}/qmgr[12]: {qid}: from=<user@{account}>, size=300, nrcpt=1 (queue active)"]
            if bounce_every and n % bounce_every == 0:
                out.append(f"{host}/smtp[13]: {qid}: to=<r{n}@rcpt.example>, relay=mx.rcpt.example[192.0.2.7]:25, "
                           "delay=1, delays=0/0/0/1, dsn=5.1.1, status=bounced (host mx.rcpt.example[192.0.2.7] "
                           "said: 550 5.1.1 no such user (in reply to RCPT TO command))")
                self.expected.update([(account, "bounce_5.1"), (account, "unknown_recipient")])
            else:
                out.append(f"{host}/smtp[13]: {qid}: to=<r{n}@rcpt.example>, relay=mx.rcpt.example[192.0.2.7]:25, "
                           "delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 2.0.0 Ok)")
                self.expected[(account, "delivered")] += 1
            out.append(f"{host}/qmgr[12]: {qid}: removed")
        return out

    def write(self, count: int, path: Path | None = None, bounce_every: int = 5) -> None:
        """Append `count` messages (to `path`, default the log), as whole lines."""
        with (path or self.path).open("a", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in self.lines(count, bounce_every)))

    def hours(self) -> list[int]:
        first = int(self.at) // 3600
        return list(range(first - 1, first + 3))


def totals(store: Store, log: MailLog) -> Counter[tuple[str, str]]:
    """(account, field) -> n, as the store holds them."""
    found: Counter[tuple[str, str]] = Counter()
    for account in ACCOUNTS:
        for fields in store.feedback_counts(account, log.hours()).values():
            found.update({(account, field): n for field, n in fields.items() if field in FIELDS and n})
    return found
