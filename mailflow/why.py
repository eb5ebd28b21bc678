"""Why mail was refused, for the admin reading the log (the `why=` field of a decision line).

The SMTP reply is written for the sender (and tells it nothing it should not know, such as
which global list a recipient is on); this text is for the admin: what happened and what to
change. Every refusal reason a Decision can carry has an entry (tests/unit/test_log_format.py
finds them in the code).
"""

from __future__ import annotations

_RULE = "set [forgery.rules] {rule} (or per account) to \"tag\" or \"off\" if this mail is legitimate"

WHY: dict[str, str] = {
    "store_error": "the store did not answer within store.timeout_ms; milter.on_error = \"tempfail\" defers mail "
                   "until it does: check Redis or the SQLite file (see the \"store unavailable\" line)",
    "fallback_unconfirmed": "the store is down and milter.on_error = \"local\" enforces locally: the last "
                            "suppression replica may list this recipient (or this milter started during the outage "
                            "and has no replica), so it is deferred until the store can confirm; see the \"store "
                            "unreachable\" line",
    "store_error_accepted": "the store did not answer; milter.on_error = \"accept\" let this mail through unchecked",
    "internal_error": "mailflow failed on this message (the traceback is logged just before); milter.on_error "
                      "= \"tempfail\" defers it: report the traceback",
    "internal_error_accepted": "mailflow failed on this message (traceback just before); milter.on_error = "
                               "\"accept\" let it through unchecked",
    "ratelimit": "the account used up a rate-limit bucket; the client retries later. `mailflow ratelimit status "
                 "ACCOUNT` shows its limits; if this is legitimate volume, `mailflow ratelimit grant` raises one "
                 "for a while, or raise [ratelimit.accounts.\"ACCOUNT\"] limits",
    "over_capacity": "the message has more recipients than the account's bucket holds, so it can never pass; raise "
                     "the account's limit or burst, or the sender splits the message",
    "suppressed": "a recipient is on a suppression list (opt-out, complaint, trap or block); "
                  "`mailflow suppress remove` takes an address off a list listed in error",
    "account_held": "the account is held (spam-trap hits or an admin; or, when the reply says \"reputation:\", "
                    "the reputation ladder); `mailflow account release ACCOUNT` releases an admin's or the traps' "
                    "hold, `mailflow reputation reset ACCOUNT --reason` the ladder's; `postsuper -H` the held mail",
    "reputation_block": "the reputation ladder blocked the account for what its mail's bounces or complaints did "
                        "([reputation]; README, \"Reputation: what each state does to mail\"): "
                        "`mailflow reputation ACCOUNT` shows why, `mailflow reputation reset ACCOUNT --reason` lifts it",
    "invalid_utf8": "the envelope sender is not valid UTF-8, so no account can be named from it",
    "unreadable_login": "the SASL login is not valid UTF-8, so no account can be named from it",
    "not_from_msp": "mail on a listener named in accounts.msp_daemons did not come from the local submission "
                    "program (no \"(from USER@localhost)\" Received: header on top)",
    "backscatter": "a delivery report of the local submission program to an address not here (not at "
                   "accounts.local_names nor a hosted domain): it would carry refused mail out; the "
                   "program reports to postmaster instead",
    "local_smtp": "unauthenticated SMTP from this host; accounts.local_smtp = \"refuse\": the program should "
                  "authenticate or submit with sendmail",
    "trusted_unmapped": "the client is in accounts.trusted_networks but has no [accounts.ip_map] entry and its "
                        "sender domain is not hosted here; add an ip_map entry for it",
    "envelope_domain": "the envelope sender's domain is not the account's: add it with `mailflow domains add "
                       "ACCOUNT DOMAIN`, [forgery.accounts] domains or sender_login_maps; or "
                       + _RULE.format(rule="envelope_domain"),
    "from_header": "the From: header is missing, repeated or not one valid address; " + _RULE.format(rule="from_header"),
    "from_domain": "the From: domain is not the account's (see envelope_domain for adding domains); "
                   + _RULE.format(rule="from_domain"),
    "sender_header": "the Sender: header is invalid or not the account's; " + _RULE.format(rule="sender_header"),
    "display_name": "the From: display name shows an address or brand that is not the account's; "
                    + _RULE.format(rule="display_name"),
    "lookalike": "the From: domain looks like a protected brand or hosted domain; " + _RULE.format(rule="lookalike"),
    "duplicate_headers": "the message repeats a header that must appear once; " + _RULE.format(rule="duplicate_headers"),
    "soft_signals": "soft forgery signals (client Received:, foreign Reply-To:, skewed Date:); "
                    + _RULE.format(rule="soft_signals"),
    "missing_unsubscribe": "bulk mail (bulk.min_recipients or more) without a working List-Unsubscribe; set "
                           "bulk.missing_unsubscribe (or per account) if this mail is legitimate",
}


LOCAL = ("decided by this host alone while the store was down (on_error = \"local\": its share of the limit, "
         "the last suppression replica); README, \"Local fallback\"")


def why(reason: str, refuses: bool, local: bool = False) -> str | None:
    """The admin's explanation of a refusal (or of mail let through on error), else None; a
    refusal made by the local fallback says so."""
    text = WHY.get(reason) if refuses or reason.endswith("_accepted") else None
    return f"{text}; {LOCAL}" if text and local and reason != "fallback_unconfirmed" else text
