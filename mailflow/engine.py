"""The policy engine: what happens at each SMTP stage, independent of any MTA.

The milter adapter feeds it plain facts (Client, Message) and applies the Decision it
returns. Store failures become the configured `on_error` decision here, with a log line.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, TypeVar

from mailflow import accounts
from mailflow.aftermath import Aftermath
from mailflow.config import Config, RatePolicy
from mailflow.decisions import (INBOUND, MSP_BACKSCATTER, NOT_FROM_MSP, POLICY_HEADER, STORE_DOWN_REPLY,
                                UNNAMEABLE_ACCOUNT, UNREADABLE_LOGIN, UNREADABLE_MACRO, UNREMOVABLE, suppressed_text)
from mailflow.events import ACCOUNT_HELD, Event, publish
from mailflow.fallback.setup import open_fallback
from mailflow.feedback.mailid import stamped
from mailflow.forgery.addresses import AddressError, Mailbox, parse_single_mailbox
from mailflow.forgery.policy import (NOTHING_FOUND, ForgeryVerdict, Ownership, domain_owner, judge_findings,
                                    named_account_orgs)
from mailflow.forgery.rules import Checker, MessageFacts
from mailflow.held import hold_reply_text
from mailflow.log import log, log_decision
from mailflow.model import PASS, Client, Decision, Identity, Message, Reply, Verdict, nameable, shown
from mailflow.ratelimit.grants import GrantOverlay
from mailflow.ratelimit.notices import LimitNotices
from mailflow.ratelimit.policy import capacity_refusal, cost_of, for_local_submission, shortfall_refusal
from mailflow.reputation.enforce import ReputationGate
from mailflow.store.base import Store, StoreError, SuppressionLookup
from mailflow.store.health import StoreHealth
from mailflow.suppression.bulk import bulk_finding
from mailflow.suppression.entries import GLOBAL, Matcher, scope_for
from mailflow.suppression.keys import Keyring
from mailflow.suppression.normalize import AddressForms

if TYPE_CHECKING:
    from mailflow.fallback.local import LocalFallback

T = TypeVar("T")


class Engine:
    def __init__(self, config: Config, store: Store, clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.store = store
        self.monitor = config.milter.mode == "monitor"
        self.ownership = Ownership(config, store)
        # The config's limits with the store's active grants laid over, then the ladder's standings
        # (throttle, hold, block: reputation/enforce.py), each kept in memory, refreshed in the background.
        self.grants = GrantOverlay(config.ratelimit, store, config.store.refresh_ms / 1000)
        self.reputation = ReputationGate(config.reputation, store, self.grants, config.store.refresh_ms / 1000)
        self.notices = LimitNotices(config.notify.near_limit, self.monitor)  # limit_refused, limit_near
        self.store_health = StoreHealth(config.milter.on_error)  # the outage's log lines, throttled
        self.fallback = open_fallback(config, store, lambda account: self.reputation.policy_for(account).limits,
                                      self.store_health)
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.aftermath = Aftermath(store, self.clock, self.monitor)  # logs, metrics, counts, hold records
        suppression = config.suppression
        self.matcher = Matcher(
            AddressForms(suppression.case_sensitive_local_part, suppression.strip_subaddress), Keyring(suppression.secret)
        ) if suppression.enabled else None
        # A sender's MAIL FROM repeats message after message: who it is and whether its envelope
        # is its own are worked out once per (ownership data, Client.policy_key, login, sender).
        self._judge_sender = functools.lru_cache(maxsize=8192)(self._judge_sender_uncached)
        self._account_orgs = named_account_orgs(config)  # accounts the identity and ip maps name own their domain

    def close(self) -> None:
        """Before the store closes: the background domain refresh stops, the sent counts are written."""
        self.ownership.stop()
        self.grants.stop()
        self.reputation.stop()
        if self.fallback is not None:
            self.fallback.stop()
        self.aftermath.close()

    # -- what the MTA does when things break ---------------------------------------------

    def error_decision(self, what: str) -> Decision:
        """The `on_error` answer for a store outage or an unexpected fault."""
        if self.config.milter.on_error == "accept":  # "local" without a fallback (SQLite): as tempfail
            return Decision(Verdict.CONTINUE, f"{what}_accepted")
        return Decision(Verdict.TEMPFAIL, what, STORE_DOWN_REPLY)

    def _store_call(self, call: Callable[[], T], proves_up: bool = True,
                    local: Callable[[LocalFallback], T | Decision] | None = None) -> T | Decision:
        """The call's answer, or on_error. A call the store may answer from memory (Redis: the
        suppression replica, recent levels) says nothing of an outage's end: `proves_up=False`.
        on_error = "local": the fallback answers instead while the store is down (fallback/local.py)."""
        fallback = self.fallback
        if fallback is not None and local is not None and fallback.active:
            return fallback.answer(local)
        try:
            result = call()
        except StoreError as exc:
            self.store_health.failed(exc)
            if fallback is not None and local is not None:
                fallback.enter(exc)
                return fallback.answer(local)
            return self.error_decision("store_error")
        if proves_up:
            self.store_health.succeeded()
        return result

    # -- stages ---------------------------------------------------------------------------

    def mail(self, client: Client, sender: str, auth_login: str | None, conn_id: str = "",
             queue_id: str = "") -> tuple[Message, Decision]:
        message = Message(sender=sender, queue_id=queue_id)
        if auth_login == UNREADABLE_MACRO:  # authenticated, but as whom cannot be read
            return message, self._finish("mail", client, message, UNREADABLE_LOGIN, conn_id=conn_id)
        identity, refusal, summary = self._judge_sender(self.ownership.checker(), client.policy_key, auth_login, sender)
        message.identity = identity
        if identity is None:
            return message, INBOUND
        if not nameable(identity.account):  # named after a sender domain that is not UTF-8: not storable
            message.identity = None  # nothing later may take it to the store
            return message, self._finish("mail", client, message, UNNAMEABLE_ACCOUNT, conn_id=conn_id)
        message.on_msp_listener = identity.source == "local" and accounts.on_msp_listener(self.config.accounts, client)
        if client.is_postfix_pickup or message.on_msp_listener:
            return message, PASS  # judged at end of message, like everything local
        refusal = refusal or self.reputation.blocked(identity.account, "mail", conn_id, queue_id)
        if refusal is not None:
            return message, self._finish("mail", client, message, refusal, conn_id=conn_id, forgery=summary or None)
        return message, PASS

    def _judge_sender_uncached(self, checker: Checker, client_key: tuple[str | None, bool, str], auth_login: str | None,
                               sender: str) -> tuple[Identity | None, Decision | None, str]:
        """Who the sender is, and a refusal at MAIL (unattributable client, envelope not owned)."""
        address, pickup, daemon_name = client_key
        client = Client(address=address, port=0 if pickup else None, daemon_name=daemon_name)
        owner = functools.partial(self._owner, checker)
        identity = accounts.identify(self.config.accounts, client, auth_login, sender, owner)
        if identity is None:
            return None, None, ""
        if isinstance(identity, accounts.Refusal):
            return identity.identity, Decision(Verdict.REJECT, identity.reason, Reply("550", "5.7.1", identity.text)), ""
        finding = checker.envelope(identity.account, sender)
        verdict = judge_findings([finding] if finding else [], self.config.forgery.actions_for(identity.account))
        refuses = verdict.decision is not None and verdict.decision.verdict in (Verdict.REJECT, Verdict.TEMPFAIL)
        return identity, verdict.decision if refuses else None, verdict.summary

    def _owner(self, checker: Checker, domain: str) -> str | None:
        """The account that owns a domain hosted here (config, login map, store, or an account named
        after it), or None."""
        return domain_owner(checker.directory, self._account_orgs, domain)

    def rcpt(self, client: Client, message: Message, recipient: str, conn_id: str = "") -> Decision:
        identity = message.identity
        if identity is None:
            message.recipients.append(recipient)
            return PASS
        if message.on_msp_listener:  # whose mail it is shows only at EOM (the MSP's header): look there
            message.recipients.append(recipient)
            return PASS
        if client.is_postfix_pickup:  # pickup turns a RCPT refusal into a deferral of the whole message
            return self._local_recipient(message, recipient, conn_id)
        refusal = self._suppression(message, recipient, conn_id)  # a suppression, or the store's on_error
        if refusal is not None and not refusal.refuses:  # the store failed and on_error=accept: no
            message.recipients.append(recipient)  # second call for levels; the debit at EOM decides
            return refusal
        if refusal is not None:
            message.refused.append(recipient)
            return self._finish("rcpt", client, message, refusal, conn_id=conn_id, rcpt=recipient)
        policy = self._policy(message, identity.account)
        if policy.exempt:
            message.recipients.append(recipient)
            return PASS
        account = identity.account
        levels: tuple[float, ...] | Decision | None = message.levels
        if message.levels is None or len(message.levels) != len(policy.limits):  # a grant added/ended a period
            levels = self._read_levels(message, account, policy, estimate=True)
        assert levels is not None
        if isinstance(levels, Decision):
            return self._finish("rcpt", client, message, levels, conn_id=conn_id, rcpt=recipient)
        # A recipient that does not fit is deferred, never rejected: the client retries it in a
        # later transaction, so it is delivered once the bucket refills. Only a whole message that
        # can never fit (judged at end of message) gets a 5xx.
        cost = cost_of(policy, len(message.recipients) + 1)
        decision = shortfall_refusal(policy, account, levels, cost) or PASS
        if decision.refuses and not message.levels_confirmed:
            # The peek may be an estimate: refuse only on the store's own reading.
            levels = self._read_levels(message, account, policy)
            if isinstance(levels, Decision):
                return self._finish("rcpt", client, message, levels, conn_id=conn_id, rcpt=recipient)
            decision = shortfall_refusal(policy, account, levels, cost) or PASS
        if decision.refuses:
            self.notices.refused(account, policy.limits, levels, cost)
            message.refused.append(recipient)
            return self._finish("rcpt", client, message, decision, conn_id=conn_id, rcpt=recipient)
        message.recipients.append(recipient)
        return PASS

    def _policy(self, message: Message, account: str) -> RatePolicy:
        """The account's rate policy (grants laid over), looked up once per message; the MSP's
        mail changes account at end of message, so the account keys it."""
        if message.rate is None or message.rate[0] != account:
            message.rate = (account, self.reputation.policy_for(account))
        return message.rate[1]

    def _local_recipient(self, message: Message, recipient: str, conn_id: str) -> Decision:
        """Local mail is judged whole at EOM: a suppressed recipient is kept aside, to be removed
        then (with a log line); any other, also one meeting a store outage (the debit meets it
        too), goes on. Pickup calls it at RCPT, the MSP listener at EOM once the account is settled."""
        refusal = self._suppression(message, recipient, conn_id)
        if refusal is not None and refusal.reason == "suppressed":
            message.suppressed.append(recipient)
            return PASS
        message.recipients.append(recipient)
        return refusal if refusal is not None and not refusal.refuses else PASS

    def _read_levels(self, message: Message, account: str, policy: RatePolicy,
                     estimate: bool = False) -> tuple[float, ...] | Decision:
        """The buckets' levels (kept on the message), or the on_error decision."""
        levels = self._store_call(lambda: self.store.levels(account, policy.limits, estimate), not estimate,
                                  lambda local: local.levels(account, policy.limits))
        if not isinstance(levels, Decision):
            message.levels, message.levels_confirmed = levels, not estimate
        return levels

    def _suppression(self, message: Message, recipient: str, conn_id: str) -> Decision | None:
        """Is this recipient suppressed (account or global), is the account held? At most one round trip."""
        identity = message.identity
        assert identity is not None
        action = self.config.suppression.action_for(identity.account)
        # The first RCPT also reads the buckets in the same round trip (rcpt() needs them next).
        policy = self._policy(message, identity.account)
        peek = policy.limits if message.levels is None and not policy.exempt else ()
        account_scope, scopes, keys = scope_for(identity.account), [GLOBAL, scope_for(identity.account)], []
        if self.matcher is None or action == "off":
            # No lists, but an admin's hold applies: learn it once, with the levels (Redis: replica).
            if message.hold_known:
                return None
            scopes = []
        else:
            keys = self.matcher.recipient_keys(recipient)
        lookup = self._store_call(
            lambda: self.store.find_suppressions(identity.account, scopes, keys, peek), False,
            lambda local: local.find_suppressions(identity.account, scopes, keys, peek))
        if isinstance(lookup, Decision):
            return lookup
        message.held, message.hold_known = message.held or lookup.account_held, True
        if lookup.levels is not None:
            message.levels = lookup.levels
        if not lookup.matches:
            return None
        self._count_trap_hit(lookup, identity.account, conn_id)
        address = shown(recipient.strip().strip("<>"))
        if any(scope == account_scope for scope, _ in lookup.matches):
            text = f"<{address}>: recipient has opted out of mail from {shown(identity.account)}"
        else:  # global: complaints, traps, provider blocks; never say which
            text = f"<{address}>: recipient is on the provider's suppression list"
        if action == "tempfail":
            return Decision(Verdict.TEMPFAIL, "suppressed", Reply("451", "4.7.1", text))
        return Decision(Verdict.REJECT, "suppressed", Reply("550", "5.7.1", text))

    def _count_trap_hit(self, lookup: SuppressionLookup, account: str, conn_id: str) -> None:
        if not any(entry.reason == "trap" for _, entry in lookup.matches):
            return
        try:
            hits = self.store.record_trap_hit(account)
            threshold = self.config.suppression.trap_hits_before_hold
            log_decision(logging.WARNING, event="trap_hit", conn=conn_id, account=account, hits_24h=hits,
                         threshold=threshold)
            if hits >= threshold and not lookup.account_held and not self.monitor:
                self.store.hold_account(account, f"{hits} spam-trap hits in 24 hours")
                log_decision(logging.WARNING, event="account_held", account=account, hits_24h=hits)
                if hits == threshold:  # the store counts atomically: one milter of the fleet sees this
                    publish(Event(ACCOUNT_HELD, account, {"reason": f"{hits} spam-trap hits in 24 hours",
                                                          "by": "trap_hits", "hits_24h": hits}))
        except StoreError as exc:
            log.warning("could not count a spam-trap hit for %s: %s", shown(account), exc)

    def header(self, message: Message, name: str, value: str) -> None:
        if message.identity is None:
            return
        message.headers.append((name, value))
        if message.identity.source != "local":
            return
        lname = name.lower()
        if message.on_msp_listener and message.msp_user is None:
            # Only the first header: the one the MSP put on top (Sendmail 8.17 does not show a
            # milter its own Received: for this hop). Any other Received: never names the user.
            message.msp_user = (accounts.msp_user(value) if lname == "received" else None) or ""
            message.msp_dsn = lname == "received" and accounts.is_msp_dsn(value)
        if lname == "x-php-originating-script" and message.php_script is None:
            message.php_script = value.strip()

    def eom(self, client: Client, message: Message, queue_id: str = "", conn_id: str = "") -> Decision:
        identity = message.identity
        if identity is None:
            return PASS
        own_bounce = message.on_msp_listener and self._is_own_bounce(message)
        if message.on_msp_listener:
            if not message.msp_user and not own_bounce:
                backscatter = message.msp_dsn and not self._all_recipients_here(message)
                refusal = MSP_BACKSCATTER if backscatter else NOT_FROM_MSP
                return self._finish("eom", client, message, refusal, conn_id=conn_id, qid=queue_id)
            if not own_bounce:
                identity = message.identity = accounts.refine_local_identity(self.config.accounts, message.msp_user or "")
            # Only now is the account known: its lists, its hold, its trap hits (as pickup at RCPT).
            recipients, message.recipients = message.recipients, []
            for recipient in recipients:
                self._local_recipient(message, recipient, conn_id)
        # Order matters: refusals first (refused mail is never charged), then the one debit, then
        # what accepted mail still gets (hold, removed recipients, the policy header).
        # The MTA's own bounces owe no domain; a Unix user's account owns the envelope or not.
        forgery = NOTHING_FOUND if own_bounce else self._forgery(client, message, envelope=message.on_msp_listener)
        policy = self._policy(message, identity.account)
        cost = cost_of(policy, len(message.recipients))
        decision: Decision
        local = (client.is_postfix_pickup or message.on_msp_listener) and not own_bounce  # SMTP: blocked at MAIL
        if local and (blocked := self.reputation.blocked(identity.account, "eom", conn_id, queue_id)):
            decision = blocked
        elif message.suppressed and not message.recipients:
            decision = Decision(Verdict.REJECT, "suppressed", Reply("550", "5.7.1", suppressed_text(message.suppressed)))
        elif not all(map(nameable, message.suppressed)):
            decision = UNREMOVABLE  # the MTA could not be told which recipient to remove
        elif forgery.decision is not None and forgery.decision.verdict in (Verdict.REJECT, Verdict.TEMPFAIL):
            decision = forgery.decision
        else:
            decision = self._charge(policy, identity.account, cost)
        if client.is_postfix_pickup:
            decision = for_local_submission(decision, self.config.ratelimit.local_over_limit)
        if decision.verdict is Verdict.CONTINUE and forgery.decision is not None:
            decision = forgery.decision  # a hold, once the message has been charged
        if decision.verdict is Verdict.CONTINUE and not message.held:  # an admin's hold says why first
            message.held = self.reputation.held(identity.account, conn_id, queue_id)
        if decision.verdict is Verdict.CONTINUE and message.held:
            decision = Decision(Verdict.HOLD, "account_held",
                                Reply("250", "2.7.0", hold_reply_text(identity.account, message.held)))
        if message.suppressed and decision.verdict in (Verdict.CONTINUE, Verdict.HOLD):
            decision = dataclasses.replace(decision, remove_recipients=tuple(message.suppressed))
        if forgery.tags and decision.verdict in (Verdict.CONTINUE, Verdict.HOLD):
            decision = dataclasses.replace(decision, add_headers=((POLICY_HEADER, " ".join(forgery.tags)),))
        if (id_key := self.config.feedback.id_key) and decision.verdict in (Verdict.CONTINUE, Verdict.HOLD):
            decision = stamped(decision, id_key, identity.account, message.headers, self.clock().timestamp())
        return self._finish("eom", client, message, decision, conn_id=conn_id, qid=queue_id, cost=cost,
                            forgery=forgery.summary, removed=",".join(message.suppressed) or None)

    def _charge(self, policy: RatePolicy, account: str, cost: int) -> Decision:
        """Take the message's cost from every bucket of the account, or say why not."""
        if policy.exempt:
            return Decision(Verdict.CONTINUE, "exempt")
        refusal = capacity_refusal(policy, account, cost)
        if refusal is not None:
            return refusal
        debit = self._store_call(lambda: self.store.debit(account, policy.limits, cost), True,
                                 lambda local: local.debit(account, policy.limits, cost))
        if isinstance(debit, Decision):
            return debit
        if debit.allowed:
            self.notices.debited(account, policy.limits, debit.levels)
            return PASS
        self.notices.refused(account, policy.limits, debit.levels, cost)
        return shortfall_refusal(policy, account, debit.levels, cost) or PASS

    def _is_own_bounce(self, message: Message) -> bool:
        """A delivery report of Sendmail's MSP: its own header (no user named), null sender, From:
        MAILER-DAEMON@ (or postmaster@) one of this host's names, and only to addresses here, so
        that no user's refused mail comes back out as backscatter to a foreign address. (Postfix
        and Sendmail's MTA never show a milter their own bounces.)"""
        if not message.msp_dsn or message.sender.strip().strip("<>") or not self._all_recipients_here(message):
            return False
        author = self._author(message)
        return author is not None and accounts.is_own_bounce(self.config.accounts, message.sender, author.local,
                                                             author.domain)

    @staticmethod
    def _author(message: Message) -> Mailbox | None:
        """The one address of the one From: header, else None."""
        froms = [value for name, value in message.headers if name.lower() == "from"]
        try:
            return parse_single_mailbox("From", froms[0]) if len(froms) == 1 else None
        except AddressError:
            return None

    def _all_recipients_here(self, message: Message) -> bool:
        """Is every recipient at one of this host's names or at a domain hosted here?"""
        checker = self.ownership.checker()
        return all(domain in self.config.accounts.local_names or (bool(domain) and self._owner(checker, domain) is not None)
                   for domain in map(accounts.domain_of, message.recipients))

    def _forgery(self, client: Client, message: Message, envelope: bool = False) -> ForgeryVerdict:
        """The header checks; the envelope too for local mail, whose account is settled only now."""
        identity = message.identity
        assert identity is not None
        checker = self.ownership.checker()
        facts = MessageFacts(identity.account, identity.source, message.sender, message.headers, self.clock())
        findings = checker.headers(facts)
        # A Unix user's own address on this host is the MSP's default sender, not anyone's forgery.
        own_address = bool(message.msp_user) and accounts.is_users_host_address(
            self.config.accounts, message.msp_user or "", message.sender)
        if (client.is_postfix_pickup or envelope) and not own_address and (
                found := checker.envelope(identity.account, message.sender)):
            findings.insert(0, found)
        if message.msp_user and self._from_own_address(message):  # cron's `From: root@HOST` to the admins
            findings = [finding for finding in findings if finding.rule != "from_domain"]
        bulk = self.config.bulk.policy_for(identity.account)
        if bulk_problem := bulk_finding(facts.by_name, len(message.recipients), bulk.min_recipients):
            findings.append(bulk_problem)
        actions = {**self.config.forgery.actions_for(identity.account), "missing_unsubscribe": bulk.missing_unsubscribe}
        return judge_findings(findings, actions)

    def _from_own_address(self, message: Message) -> bool:
        """Is the From: the MSP user's own address on this host, and every recipient here? Such
        mail names nobody else, and stays with this host's admins and customers."""
        author = self._author(message)
        return (author is not None and accounts.is_users_host_address(self.config.accounts, message.msp_user or "",
                                                                      author.address)
                and self._all_recipients_here(message))

    # -- every decision: enforced (monitor: logged only), then booked ------------------------

    def _finish(self, stage: str, client: Client, message: Message, decision: Decision, conn_id: str = "",
                qid: str = "", rcpt: str | None = None, cost: int | None = None, forgery: str | None = None,
                removed: str | None = None) -> Decision:
        enforced = decision
        if self.monitor and (decision.refuses or decision.add_headers or decision.remove_recipients
                             or decision.remove_headers):
            enforced = Decision(Verdict.CONTINUE, decision.reason)  # decide and log, change nothing
        self.aftermath.decided(stage, client, message, decision, enforced, conn_id or None, qid, rcpt, cost, forgery,
                               removed, self.fallback is not None and self.fallback.active)
        return enforced
