"""Customer notices: an account's own contact address gets the events listed in
[notify] customer_events, written from a template with $-placeholders (string.Template).

A template's first line may be `Subject: ...`; the rest, after a blank line, is the body.
Placeholders: $event $account $summary $details $at $host $id, and every detail field by name
($limit, $percent, $reason, ...). One that names nothing is left as written.
"""

from __future__ import annotations

import string

from mailflow.events import Event
from mailflow.notify.payload import details, iso, shown, summary

DEFAULT_TEMPLATE = """Subject: [$host] $summary

Hello,

this is an automatic notice from the mail service of $host about your account $account:

$summary.

$details
When: $at
Notice: $id
Questions: reply to your provider's support, quoting the notice id.
"""


def render(template: str, event: Event, event_id: str, host: str) -> tuple[str, str]:
    """(subject, body). The subject line is split off before anything is filled in: no value,
    however it is written, can add a header or move text between subject and body."""
    text = template or DEFAULT_TEMPLATE
    subject_template = f"[$host] $summary"
    if text.startswith("Subject:"):
        first, _, text = text.partition("\n")
        subject_template = first[len("Subject:"):].strip()
        text = text.lstrip("\n")
    values = {key: shown(key, value) for key, value in event.detail.items()}
    values.update(event=event.kind, account=event.account, summary=summary(event), details=details(event),
                  at=iso(event.at), host=host, id=event_id)
    subject = " ".join(string.Template(subject_template).safe_substitute(values).split())
    return subject, string.Template(text).safe_substitute(values)
