"""What-if: judge a day of logged traffic under a (new) config, in log time, touching nothing.

The engine runs in-process on a scratch SQLite store whose clock is the log's timestamps, so a
day replays in seconds yet the buckets drain as they would have that day. Decisions are the
enforce-mode ones, whatever `mode` the config says: this is what monitor mode would report.

A mail log has no headers, so the rules that read them (the From:/Sender: checks, lookalikes,
duplicates, the bulk gate's List-Unsubscribe) are turned off here and reported as not judged,
never as refusals nobody made. What a log does show is judged: accounts, envelope senders, rate
limits, and, read from the real store (`real`, read-only), suppression lists and held accounts.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from mailflow.config import Config
from mailflow.engine import Engine
from mailflow.forgery.names import RULES
from mailflow.model import Client, Decision, Verdict
from mailflow.ratelimit.limits import Limit
from mailflow.replay.sessions import Session
from mailflow.store.base import Store, StoreError, SuppressionLookup
from mailflow.store.sqlite import SqliteStore

log = logging.getLogger("mailflow")

ACTIONS = ("accepted", "deferred", "rejected", "held", "inbound")
NOT_JUDGED = "not judged (no headers in a log)"
HEADER_RULES = tuple(rule for rule in RULES if rule != "envelope_domain")  # envelope_domain reads MAIL FROM
_EOM_ACTION = {Verdict.CONTINUE: "accepted", Verdict.TEMPFAIL: "deferred", Verdict.REJECT: "rejected",
               Verdict.HOLD: "held"}
# One message judged: the session, its account, its action (ACTIONS) and the decision's reason.
OnMessage = Callable[[Session, str, str, str], None]


class _WhatIfStore(SqliteStore):
    """The scratch store, which also sees the real store's suppression entries and held accounts."""

    def __init__(self, path: str, clock: Callable[[], float], real: Store | None) -> None:
        super().__init__(path, timeout_ms=5000, clock=clock)
        self.real = real
        self.real_failure = ""

    def find_suppressions(self, account: str, scopes: Sequence[str], keys: Sequence[str],
                          peek: Sequence[Limit] = ()) -> SuppressionLookup:
        mine = super().find_suppressions(account, scopes, keys, peek)
        if self.real is None:
            return mine
        try:
            theirs = self.real.find_suppressions(account, scopes, keys)
        except StoreError as exc:  # judged without the lists from here on, and said so at the end
            self.real_failure, self.real = str(exc), None
            return mine
        return SuppressionLookup(theirs.matches + mine.matches, mine.account_held or theirs.account_held, mine.levels)


def without_header_rules(config: Config) -> Config:
    """The config in enforce mode, with every rule that reads headers off (globally and per account)."""
    forgery = config.forgery
    accounts = {name: dataclasses.replace(acct, actions={k: v for k, v in acct.actions.items() if k not in HEADER_RULES})
                for name, acct in forgery.accounts.items()}
    forgery = dataclasses.replace(forgery, actions={**forgery.actions, **{rule: "off" for rule in HEADER_RULES}},
                                  accounts=accounts)
    bulk = dataclasses.replace(
        config.bulk, default=dataclasses.replace(config.bulk.default, missing_unsubscribe="off"),
        accounts={name: dataclasses.replace(p, missing_unsubscribe="off") for name, p in config.bulk.accounts.items()})
    return dataclasses.replace(config, milter=dataclasses.replace(config.milter, mode="enforce"), forgery=forgery,
                               bulk=bulk)


def what_if(config: Config, sessions: Iterable[Session], real: Store | None = None,
            on_message: OnMessage | None = None) -> dict[str, Counter[str]]:
    """Counts per account: messages by final action, plus `rcpt_deferred` for recipients refused
    at RCPT, and `bulk_not_judged` for messages the bulk gate would have looked at by their
    recipient count alone. A failure of the real store is logged and judging goes on without it."""
    report: dict[str, Counter[str]] = defaultdict(Counter)
    now = [0.0]
    emit = on_message or (lambda session, account, action, reason: None)
    with tempfile.TemporaryDirectory(prefix="mailflow-whatif-") as scratch:
        store = _WhatIfStore(str(Path(scratch) / "whatif.db"), lambda: now[0], real)
        engine = Engine(without_header_rules(config), store)
        try:
            for session in sessions:
                now[0] = session.timestamp or now[0]
                account, action, reason, rcpt_refused = _judge(engine, session)
                report[account]["messages"] += 1
                report[account][action] += 1
                report[account]["rcpt_deferred"] += rcpt_refused
                if account != "(inbound)" and len(session.rcpt_to) >= config.bulk.policy_for(account).min_recipients:
                    report[account]["bulk_not_judged"] += 1
                emit(session, account, action, reason)
        finally:
            engine.close()
            store.close()
    if store.real_failure:
        log.warning("the store failed during the what-if; later messages were judged without its suppression "
                    "lists and holds: %s", store.real_failure)
    return dict(report)


def _judge(engine: Engine, session: Session) -> tuple[str, str, str, int]:
    """(account, action, reason, recipients refused at RCPT) of one logged message."""
    client = Client(session.client.name, session.client.address, session.client.port)
    message, decision = engine.mail(client, session.mail_from, session.login)
    account = message.identity.account if message.identity else "(inbound)"
    if decision.verdict is Verdict.ACCEPT:
        return account, "inbound", decision.reason, 0
    if decision.refuses:
        return account, _EOM_ACTION[decision.verdict], decision.reason, 0
    refusals: list[Decision] = [d for d in (engine.rcpt(client, message, r) for r in session.rcpt_to) if d.refuses]
    if not message.recipients and not refusals:
        return account, "deferred", "no recipients in the log", 0
    if not message.recipients:
        last = refusals[-1]
        return account, "rejected" if last.verdict is Verdict.REJECT else "deferred", last.reason, len(refusals)
    for name, value in session.headers:
        engine.header(message, name, value)
    final = engine.eom(client, message, queue_id=session.queue_id)
    return account, _EOM_ACTION.get(final.verdict, "accepted"), final.reason, len(refusals)
