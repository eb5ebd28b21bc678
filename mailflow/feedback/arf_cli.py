"""`mailflow feedback arf [--config FILE] [--maildir DIR]`: complaints in, counted and suppressed.

One report on stdin (a Postfix pipe transport, procmail, a .forward), or every report in a
Maildir's new/ and the messages of cur/ not yet flagged Seen, each moved to cur/ with the `S`
flag once read, counted or not, so that a bad report is not read again on every run.

Exit codes, for a pipe transport (see README "Complaints (ARF)"): 0 the report was read, counted
or not (a malformed or unattributable report is one line on stdout: bouncing it to the feedback
loop helps nobody, and an MTA's bounce to a loop's null-ish sender is backscatter); 75
(EX_TEMPFAIL: the MTA keeps the report and tries again) when the store cannot be reached, nothing
counted; 2 a bad argument or config, as every mailflow command.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import click

from mailflow.config import Config
from mailflow.feedback.apply import off_the_hot_path
from mailflow.feedback.arf import MAX_REPORT_BYTES, Attribution, Outcome, process, read_bounded
from mailflow.log import log, setup_logging
from mailflow.model import shown
from mailflow.store.base import Store, StoreError

EX_TEMPFAIL = 75


def register_arf(group: click.Group, load: Callable[[str | None], Config],
                 store: Callable[[Config], AbstractContextManager[Store]]) -> None:
    """Add `arf` to the `mailflow feedback` group: `load` and `store` are mailflow.cli's _load and
    _store (the config's one-line errors, the store opened with its notifier)."""

    @group.command("arf")
    @click.option("-c", "--config", "config_file", metavar="FILE",
                  help="Config file (default: $MAILFLOW_CONFIG, else /etc/mailflow/mailflow.toml).")
    @click.option("--maildir", metavar="DIR", default=None,
                  help="Read every unread report of this Maildir (new/, and cur/ not flagged S), then flag it.")
    def arf(config_file: str | None, maildir: str | None) -> None:
        """Count ARF complaint reports (RFC 5965) and suppress their complainers.

        One report on stdin, or --maildir DIR. Exit 0 once read (counted or not: one line says
        which and why), 75 when the store is down (try later), 2 for a bad argument or config."""
        if maildir is not None:
            check_maildir(maildir)
        config = load(config_file)
        say = _teller(config)
        try:
            with store(off_the_hot_path(config)) as opened:
                attribution = Attribution(config, opened)
                if maildir is None:
                    raw = read_bounded(sys.stdin.buffer)
                    say(process(config, opened, attribution, raw, time.time()).line)
                else:
                    read_maildir(maildir, lambda raw: process(config, opened, attribution, raw, time.time()), say)
        except StoreError as exc:
            click.echo(f"mailflow: store unavailable, nothing counted; try later: {shown(str(exc), 300)}", err=True)
            sys.exit(EX_TEMPFAIL)


def _teller(config: Config) -> Callable[[str], None]:
    """Each report's line on stdout, and to syslog when the config logs there: a pipe
    transport's output is thrown away once the delivery succeeds."""
    if config.log.target != "syslog":
        return click.echo
    setup_logging(config.log)

    def say(line: str) -> None:
        click.echo(line)
        log.info("feedback arf: %s", line)
    return say


def check_maildir(path: str) -> None:
    for sub in ("new", "cur"):
        if not os.path.isdir(os.path.join(path, sub)):
            raise click.UsageError(f"--maildir {path}: no {sub}/ directory; not a Maildir")


def _flags(name: str) -> str:
    """A Maildir name's flags (`…:2,RS` -> `RS`)."""
    _, info, flags = name.rpartition(":2,")
    return flags if info else ""


def _read_message(path: str) -> bytes | str | None:
    """A Maildir message's first bytes; None when it is gone (another reader took it); why not
    for anything else, a symlink included (not followed: the mailbox's writer is not this user)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"not read ({exc.strerror}): left where it is"
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "not a regular file: left where it is"
        return fh.read(MAX_REPORT_BYTES + 1)


def _moved(source: str, target: str) -> str:
    """Into cur/ flagged Seen; else why not, for the report's line. A report left where it is is
    read again next run (a repeat then: counted once); the others still get read."""
    try:
        os.rename(source, target)
    except FileNotFoundError:  # two runs at once (cron): the other one has handled it too
        return " (moved by another reader meanwhile)"
    except OSError as exc:  # a name too long for its flags, a directory not writable
        return f" (not moved ({exc.strerror}): read again next run)"
    return ""


def read_maildir(path: str, handle: Callable[[bytes], Outcome], say: Callable[[str], None]) -> None:
    """Every unread report, oldest name first; each moved to cur/ with `S` once handled. A
    StoreError passes with the report where it was (read again next run)."""
    new, cur = os.path.join(path, "new"), os.path.join(path, "cur")
    waiting = [(new, name) for name in sorted(os.listdir(new))]
    waiting += [(cur, name) for name in sorted(os.listdir(cur)) if "S" not in _flags(name)]
    for directory, name in waiting:
        if name.startswith("."):
            continue
        source = os.path.join(directory, name)
        raw = _read_message(source)
        if raw is None or isinstance(raw, str):
            if raw is not None:
                say(f"{shown(name, 120)}: {raw}")
            continue
        outcome = handle(raw)
        base = name.rpartition(":2,")[0] if ":2," in name else name
        target = os.path.join(cur, f"{base}:2,{''.join(sorted(set(_flags(name)) | {'S'}))}")
        say(f"{shown(name, 120)}: {outcome.line}{_moved(source, target)}")
