"""The engine's fixed decisions and replies (mailflow/engine.py gives them; the adapter and tests
name them)."""

from __future__ import annotations

from mailflow.model import Decision, Reply, Verdict, shown

INBOUND = Decision(Verdict.ACCEPT, "inbound")
STORE_DOWN_REPLY = Reply("451", "4.3.0", "Mail policy service temporarily unavailable; try again later")
# on_error = "local": a recipient the last replica cannot clear is deferred, never refused on a guess.
FALLBACK_UNCONFIRMED = Decision(Verdict.TEMPFAIL, "fallback_unconfirmed", Reply(
    "451", "4.3.0", "Recipient cannot be checked against the suppression lists while the policy store is down; "
                    "try again later"))
POLICY_HEADER = "X-Mailflow-Policy"
NOT_FROM_MSP = Decision(Verdict.REJECT, "not_from_msp", Reply(
    "550", "5.7.1", "This listener takes only mail from the local submission program; submit with sendmail"))
# The MSP's report on mail this milter refused, to an address not here: what spam sent with
# `-f victim@elsewhere` would come back out as. The MSP then reports to postmaster here instead.
MSP_BACKSCATTER = Decision(Verdict.REJECT, "backscatter", Reply(
    "550", "5.7.1", "Delivery reports of the local submission program go only to addresses of this host"))
# A macro whose value is not UTF-8 (pymilter decodes macros strictly and cannot hand over their
# bytes): a NUL, which no macro can hold, marks it. A login that cannot be read names no account.
UNREADABLE_MACRO = "\0unreadable"
UNREADABLE_LOGIN = Decision(Verdict.REJECT, "unreadable_login", Reply(
    "550", "5.7.1", "Your login name is not valid UTF-8, so mail from it cannot be attributed to an account"))
UNNAMEABLE_ACCOUNT = Decision(Verdict.REJECT, "invalid_utf8", Reply(
    "550", "5.1.7", "Sender address is not valid UTF-8, so mail from it cannot be attributed to an account"))
# Local mail with a suppressed recipient that is not valid UTF-8: pymilter can name only UTF-8
# recipients to the MTA (smfi_delrcpt), so it cannot be removed, and the message is refused.
UNREMOVABLE = Decision(Verdict.REJECT, "suppressed", Reply(
    "550", "5.7.1", "A suppressed recipient is not valid UTF-8 and cannot be removed; message refused"))


def suppressed_text(recipients: list[str]) -> str:
    """At most three recipients, each shown bounded, then how many more: any list fits a reply."""
    listed = ", ".join(shown(r) for r in recipients[:3])
    more = f" and {len(recipients) - 3} more" if len(recipients) > 3 else ""
    return f"Every recipient is on a suppression list: {listed}{more}"
