"""[feedback] of mailflow.toml: where the MTA's log is (`mailflow feedback follow`), the key of the
X-Mailflow-ID header (complaints: `mailflow feedback arf`), and the provider's outbound IPs as the
log names them (receivers' blocks are counted per IP)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from mailflow.feedback import mailid
from mailflow.settings.receivers import ReceiverSettings, parse_receivers
from mailflow.settings.table import Table

# A syslog tag as Postfix and Sendmail write it: "postfix/smtp", "postfix-out2/smtp", "sendmail".
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,63}){0,3}")


@dataclass(frozen=True)
class FeedbackSettings:
    log: str = "/var/log/mail.log"  # the MTA's log, as syslog writes it
    # The key of the X-Mailflow-ID header (read from id_key_file); empty: no header is added.
    id_key: bytes = field(default=b"", repr=False)
    id_old_key: bytes = field(default=b"", repr=False)  # id_old_key_file: still read, never written
    # Delivery agent's syslog name -> the outbound IP it sends from ("postfix-out2/smtp" =
    # "192.0.2.11"). Empty: every delivery is counted against the one [rbl] ip, if there is one.
    outbound_ips: Mapping[str, str] = field(default_factory=dict)
    # A complaint without our X-Mailflow-ID goes to the owner of its From: domain. Anyone can mail
    # a forged report to a feedback-loop address, so once mail carries the keyed id, only the id
    # attributes: None (unset) means "by domain only while no id key is set".
    arf_by_domain: bool | None = None

    def complaints_by_domain(self) -> bool:
        return not self.id_key if self.arf_by_domain is None else self.arf_by_domain
    receivers: ReceiverSettings = ReceiverSettings()  # receiver_* keys: settings/receivers.py


def parse_feedback(t: Table) -> FeedbackSettings:
    d = FeedbackSettings()
    log = t.text("log", d.log)
    if not log.startswith("/") or "\0" in log:
        t.report("log", f"{log[:200]!r}: expected an absolute path (the service has no working directory)")
        log = d.log
    ips = t.table("outbound_ips")
    outbound: dict[str, str] = {}
    for service in ips.keys():
        text = ips.text(service, "")
        if not isinstance(ips.raw(service), str):  # reported once, by text()
            continue
        if not _SERVICE.fullmatch(service):
            ips.report(service, "not a syslog service name (like postfix/smtp or postfix-out2/smtp)")
            continue
        try:
            outbound[service] = str(ipaddress.ip_address(text.strip()))
        except ValueError:
            ips.report(service, f"{text[:100]!r} is not an IP address")
    by_domain = t.flag("arf_by_domain", False) if "arf_by_domain" in t else None
    settings = FeedbackSettings(log=log, outbound_ips=outbound, arf_by_domain=by_domain,
                                receivers=parse_receivers(t))
    settings = mailid.with_id_keys(t, settings)  # id_key_file, id_old_key_file (the complaint reader's)
    t.finish()
    return settings
