"""`mailflow replay`: load sessions, play them, print one line each and a summary."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence

import click

from mailflow.accounts import domain_of
from mailflow.config import Config
from mailflow.milter.client import MilterClientError
from mailflow.replay.postfix_log import sessions_from_log
from mailflow.replay.runner import Outcome, ReplayError, mismatches, parse_hostport, replay_milter, replay_smtp
from mailflow.replay.sessions import Session, SessionFileError, load_sessions
from mailflow.replay.shadow import shadow_report, shadow_run
from mailflow.replay.whatif import ACTIONS, NOT_JUDGED, what_if
from mailflow.store import Store, StoreError, open_store, sqlite_path

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_INPUT = 0, 1, 2


def run_replay(files: Sequence[str], logs: Sequence[str], milter: str | None, smtp: str | None,
               year: int | None, config: Config | None, details: bool = False) -> int:
    try:
        sessions = [s for path in files for s in load_sessions(path)]
        sessions += [s for path in logs for s in _log_sessions(path, year)]
        target = parse_hostport(smtp) if smtp else None
    except (SessionFileError, ValueError) as exc:
        click.echo(f"mailflow: {exc}", err=True)
        return EXIT_BAD_INPUT
    if config is not None:
        _run_what_if(config, sessions, details)
        for path in logs:  # the same log again, for the ladder (replay/shadow.py)
            try:
                with open(path, encoding="utf-8", errors="replace") as fh:
                    shadow = shadow_run(config, (line.rstrip("\r\n") for line in fh), year)
            except OSError as exc:  # read just above; gone since
                click.echo(f"mailflow: {path}: {exc.strerror}", err=True)
                return EXIT_BAD_INPUT
            for line in shadow_report(config, shadow):
                click.echo(line)
        return EXIT_OK

    passed = failed = skipped = 0
    by_account: dict[str, Counter[str]] = {}
    for session in sessions:
        for round_ in range(1, session.repeat + 1):
            try:
                outcome = replay_milter(session, milter) if milter else replay_smtp(session, *target)  # type: ignore[misc]
            except (MilterClientError, *ReplayError) as exc:
                click.echo(f"mailflow: {session.name}: cannot replay: {exc}", err=True)
                return EXIT_BAD_INPUT
            label = session.name if session.repeat == 1 else f"{session.name} ({round_}/{session.repeat})"
            if outcome.skipped:
                skipped += 1
                click.echo(f"SKIP {label}: {outcome.skipped}")
                continue
            _count(by_account, session, outcome)
            problems = mismatches(session, outcome)
            if problems:
                failed += 1
                click.echo(f"FAIL {label}: " + "; ".join(problems))
            else:
                passed += 1
                click.echo(f"ok   {label}: {_summary(outcome)}")
            if session.pause:
                time.sleep(session.pause)
    if logs:
        _print_report(by_account, "replies per account (account guessed from login or sender domain)")
    click.echo(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return EXIT_MISMATCH if failed else EXIT_OK


def _run_what_if(config: Config, sessions: list[Session], details: bool) -> None:
    """The what-if report; with `details`, first one line per message (queue id, account, action, reason)."""
    def line(session: Session, account: str, action: str, reason: str) -> None:
        click.echo(f"{session.queue_id or session.name:<16} {account:<32} {action:<9} {reason}")

    real, why_not = _real_store(config)
    try:
        report = what_if(config, sessions, real, line if details else None)
    finally:
        if real is not None:
            real.close()
    _print_report(report, f"what-if of {len(sessions)} logged messages under {config.path}")
    bulk = sum(counts["bulk_not_judged"] for counts in report.values())
    click.echo(f"header rules (From:/Sender: checks, lookalikes, duplicate headers, bulk List-Unsubscribe): {NOT_JUDGED}"
               + (f"; {bulk} message{'s' * (bulk != 1)} had enough recipients for the bulk gate" if bulk else ""))
    if why_not:
        click.echo(f"suppression lists and held accounts: not judged ({why_not})")


def _real_store(config: Config) -> tuple[Store | None, str]:
    """The config's store, read for its suppression lists and held accounts; never created here."""
    url = config.store.url
    if url.startswith("sqlite://") and not os.path.isfile(sqlite_path(url)):
        return None, f"{sqlite_path(url)} does not exist"
    try:
        return open_store(url, config.store.timeout_ms, config.store.refresh_ms, config.store.group), ""
    except (StoreError, ValueError) as exc:
        return None, str(exc)


def _log_sessions(path: str, year: int | None) -> list[Session]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return sessions_from_log(fh, year)
    except OSError as exc:
        raise SessionFileError(f"{path}: {exc.strerror}") from None


def _summary(outcome: Outcome) -> str:
    rcpt = Counter(r.split(" ", 2)[0] if r != "accept" else "accept" for r in outcome.rcpt)
    rcpt_text = ",".join(f"{word}x{n}" for word, n in rcpt.items()) or "-"
    return f"mail={_short(outcome.mail)} rcpt={rcpt_text} eom={_short(outcome.eom)}"


def _short(reply: str) -> str:
    return reply if " " not in reply or reply == "not reached" else " ".join(reply.split(" ")[:2])


def _count(by_account: dict[str, Counter[str]], session: Session, outcome: Outcome) -> None:
    account = domain_of(session.login) if session.login and "@" in session.login else (session.login or domain_of(session.mail_from) or "(none)")
    counts = by_account.setdefault(account, Counter())
    counts["messages"] += 1
    final = outcome.eom if outcome.eom != "not reached" else outcome.mail
    counts[_action_of(final, outcome)] += 1
    counts["rcpt_deferred"] += sum(r.startswith("4") for r in outcome.rcpt)


def _action_of(final: str, outcome: Outcome) -> str:
    if final in ("accept", "hold"):
        return "accepted" if final == "accept" else "held"
    if final == "not reached":
        return "deferred" if any(r.startswith("4") for r in outcome.rcpt) else "rejected"
    return "deferred" if final.startswith("4") else "rejected"


def _print_report(report: dict[str, Counter[str]], title: str) -> None:
    click.echo(title)
    columns = ("messages", *ACTIONS, "rcpt_deferred")
    click.echo(f"{'account':<32}" + "".join(f"{c:>14}" for c in columns))
    for account in sorted(report, key=lambda a: (-report[a]["messages"], a)):
        click.echo(f"{account:<32}" + "".join(f"{report[account][c]:>14}" for c in columns))
