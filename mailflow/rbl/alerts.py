"""Tell the admins: a log line always, a JSON webhook POST and an e-mail when configured.

E-mail goes through the one mail channel (mailflow/notify/mail.py). A failing channel is logged
and never stops the others or the watcher.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

from mailflow.settings import RblSettings
from mailflow.log import log_decision
from mailflow.notify.mail import MailChannel

log = logging.getLogger("mailflow")


def subject_of(alert: dict[str, Any]) -> str:
    event = alert["event"]
    if event in ("receiver_blocked", "receiver_unblocked"):  # mailflow/feedback/receivers.py
        verb = "refused by" if event == "receiver_blocked" else "accepted again by"
        return f"[mailflow] {alert['ip']} {verb} receiver {alert['receiver']}"
    if event in ("listed", "delisted"):
        return f"[mailflow] {alert['ip']} {event} {'on' if event == 'listed' else 'from'} {alert['zone']}"
    return f"[mailflow] DNSBL zone {alert['zone']} is {'blind' if event == 'blind' else 'trusted again'}"


def body_of(alert: dict[str, Any]) -> str:
    lines = [subject_of(alert)[len("[mailflow] "):], ""]
    for key in ("codes", "meanings", "kind", "reason", "delist_url", "detail", "since"):
        if alert.get(key):
            value = alert[key]
            lines.append(f"{key}: {', '.join(value) if isinstance(value, list) else value}")
    if alert.get("suspects"):
        lines += ["", "Accounts that sent the most mail in the hour before:"]
        lines += [f"  {s['account']:<40} {s['sent']}" for s in alert["suspects"]]
    if alert.get("refused"):
        lines += ["", "Accounts whose mail the receiver refused:"]
        lines += [f"  {s['account']:<40} {s['refused']}" for s in alert["refused"]]
    return "\n".join(lines) + "\n"


class Alerter:
    def __init__(self, settings: RblSettings, timeout: float = 10.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self.mail = MailChannel(settings, timeout)

    def send(self, alert: dict[str, Any]) -> None:
        log_decision(logging.WARNING, **{"event": f"rbl_{alert['event']}", **{
            k: (",".join(v) if isinstance(v, list) and all(isinstance(i, str) for i in v) else v)
            for k, v in alert.items() if k not in ("event", "suspects", "refused")}},
            suspects=",".join(f"{s['account']}:{s['sent']}" for s in alert.get("suspects", [])) or None,
            refused=",".join(f"{s['account']}:{s['refused']}" for s in alert.get("refused", [])) or None)
        if self.settings.webhook:
            self._webhook(alert)
        if self.settings.email_to and (self.settings.smtp_relay or self.settings.sendmail):
            self._email(alert)

    def _webhook(self, alert: dict[str, Any]) -> None:
        request = urllib.request.Request(self.settings.webhook, data=json.dumps(alert).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except (urllib.error.URLError, OSError) as exc:
            log.error("webhook %s failed for %s: %s", self.settings.webhook, subject_of(alert), exc)

    def _email(self, alert: dict[str, Any]) -> None:
        self.mail.send(self.settings.email_to, subject_of(alert), body_of(alert))
