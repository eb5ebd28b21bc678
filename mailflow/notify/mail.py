"""The one way mailflow sends e-mail (DNSBL alerts, event notices): the [rbl.alerts] channel,
SMTP with AUTH (STARTTLS first when offered, never a password in clear to another host) through
`smtp_relay`, or local submission through `sendmail`. A failure is logged, never raised.
`timeout` bounds each SMTP read; DEADLINE_FACTOR times it bounds the whole submission, so a relay
that trickles its replies cannot hold the caller (the notifier's one thread) for ever."""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Sequence
from email.message import EmailMessage

from mailflow.model import Client, shown
from mailflow.deadline import Deadline
from mailflow.settings import RblSettings

log = logging.getLogger("mailflow")
DEADLINE_FACTOR = 3


class _SMTP(smtplib.SMTP):
    """smtplib.SMTP whose socket the deadline shuts down when its time is up."""

    def __init__(self, deadline: Deadline, host: str, port: int, timeout: float) -> None:
        self._deadline = deadline  # before connecting: the greeting is read in the constructor
        super().__init__(host, port, timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return self._deadline.watch(super()._get_socket(host, port, timeout))  # type: ignore[misc]  # not in typeshed


class MailChannel:
    def __init__(self, settings: RblSettings, timeout: float = 10.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self.sender = settings.email_from or f"mailflow@{socket.getfqdn()}"

    @property
    def configured(self) -> bool:
        return bool(self.settings.smtp_relay or self.settings.sendmail)

    def message(self, to: Sequence[str], subject: str, body: str) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = ", ".join(to)
        message["Subject"] = shown(subject, 200)  # one printable line, whatever it names
        message.set_content(body)
        return message

    def send(self, to: Sequence[str], subject: str, body: str, what: str = "alert e-mail") -> bool:
        """Send one message; False (logged, naming `what` and the subject) when it could not go."""
        message = self.message(to, subject, body)
        if self.settings.sendmail:
            return self._sendmail(message, to, what)
        assert self.settings.smtp_relay is not None
        host, port = self.settings.smtp_relay
        deadline = Deadline(self.timeout * DEADLINE_FACTOR, "mailflow-mail-deadline")
        try:
            with deadline, _SMTP(deadline, host, port, self.timeout) as smtp:
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
            why = f"no whole exchange within {self.timeout * DEADLINE_FACTOR:g}s" if deadline.cut_off else exc
            log.error("%s through %s:%s failed for %s: %s", what, host, port, message["Subject"], why)
            return False
        return True

    def _sendmail(self, message: EmailMessage, to: Sequence[str], what: str) -> bool:
        """Local submission: Postfix's sendmail (pickup) or Sendmail's (the MSP), as any local mail."""
        sender = ["-f", self.settings.email_from] if self.settings.email_from else []
        command = [self.settings.sendmail, "-oi", *sender, "--", *to]
        try:
            done = subprocess.run(command, input=message.as_bytes(), capture_output=True, timeout=self.timeout,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("%s through %s failed for %s: %s", what, self.settings.sendmail, message["Subject"], exc)
            return False
        if done.returncode != 0:
            said = " ".join(done.stderr.decode("utf-8", "replace").split())[:300]
            log.error("%s through %s failed for %s: exit %d: %s", what, self.settings.sendmail, message["Subject"],
                      done.returncode, said)
            return False
        return True


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
