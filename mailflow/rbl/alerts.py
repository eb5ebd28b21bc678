"""Tell the admins: a log line always, a JSON webhook POST and an e-mail when configured.

A failing channel is logged and never stops the others or the watcher.
"""

from __future__ import annotations

import json
import logging
import smtplib
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from email.message import EmailMessage
from typing import Any

from mailflow.settings import RblSettings
from mailflow.log import log_decision
from mailflow.model import Client

log = logging.getLogger("mailflow")


def subject_of(alert: dict[str, Any]) -> str:
    event = alert["event"]
    if event in ("listed", "delisted"):
        return f"[mailflow] {alert['ip']} {event} {'on' if event == 'listed' else 'from'} {alert['zone']}"
    return f"[mailflow] DNSBL zone {alert['zone']} is {'blind' if event == 'blind' else 'trusted again'}"


def body_of(alert: dict[str, Any]) -> str:
    lines = [subject_of(alert)[len("[mailflow] "):], ""]
    for key in ("codes", "meanings", "reason", "delist_url", "detail", "since"):
        if alert.get(key):
            value = alert[key]
            lines.append(f"{key}: {', '.join(value) if isinstance(value, list) else value}")
    if alert.get("suspects"):
        lines += ["", "Accounts that sent the most mail in the hour before:"]
        lines += [f"  {s['account']:<40} {s['sent']}" for s in alert["suspects"]]
    return "\n".join(lines) + "\n"


class Alerter:
    def __init__(self, settings: RblSettings, timeout: float = 10.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self.sender = settings.email_from or f"mailflow@{socket.getfqdn()}"

    def send(self, alert: dict[str, Any]) -> None:
        log_decision(logging.WARNING, **{"event": f"rbl_{alert['event']}", **{
            k: (",".join(v) if isinstance(v, list) and all(isinstance(i, str) for i in v) else v)
            for k, v in alert.items() if k not in ("event", "suspects")}},
            suspects=",".join(f"{s['account']}:{s['sent']}" for s in alert.get("suspects", [])) or None)
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
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = ", ".join(self.settings.email_to)
        message["Subject"] = subject_of(alert)
        message.set_content(body_of(alert))
        if self.settings.sendmail:
            self._sendmail(message, alert)
            return
        assert self.settings.smtp_relay is not None
        host, port = self.settings.smtp_relay
        try:
            with smtplib.SMTP(host, port, timeout=self.timeout) as smtp:
                if self.settings.smtp_user:
                    smtp.ehlo()
                    if smtp.has_extn("starttls"):
                        smtp.starttls(context=_tls_context(host))
                        smtp.ehlo()
                    elif not _on_this_host(host):
                        raise smtplib.SMTPException("the relay offers no STARTTLS; the password is not sent in clear")
                    smtp.login(self.settings.smtp_user, self.settings.smtp_password)
                smtp.send_message(message)
        except (smtplib.SMTPException, OSError) as exc:
            log.error("alert e-mail through %s:%s failed for %s: %s", host, port, subject_of(alert), exc)

    def _sendmail(self, message: EmailMessage, alert: dict[str, Any]) -> None:
        """Local submission: Postfix's sendmail (pickup) or Sendmail's (the MSP), as any local mail."""
        sender = ["-f", self.settings.email_from] if self.settings.email_from else []
        command = [self.settings.sendmail, "-oi", *sender, "--", *self.settings.email_to]
        try:
            done = subprocess.run(command, input=message.as_bytes(), capture_output=True, timeout=self.timeout,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("alert e-mail through %s failed for %s: %s", self.settings.sendmail, subject_of(alert), exc)
            return
        if done.returncode != 0:
            said = " ".join(done.stderr.decode("utf-8", "replace").split())[:300]
            log.error("alert e-mail through %s failed for %s: exit %d: %s", self.settings.sendmail,
                      subject_of(alert), done.returncode, said)


def _tls_context(host: str) -> ssl.SSLContext:
    """Verified TLS, except to a relay on this host: its certificate names the host's public name,
    not 127.0.0.1, and the password never leaves the machine."""
    context = ssl.create_default_context()
    if _on_this_host(host):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _on_this_host(host: str) -> bool:
    return host == "localhost" or Client(address=host).on_this_host
