"""[feedback] of mailflow.toml: where the MTA's log is (`mailflow feedback follow`), the key of the
X-Mailflow-ID header (complaints: `mailflow feedback arf`), and the provider's outbound IPs as the
log names them (receivers' blocks are counted per IP)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mailflow.settings.receivers import ReceiverSettings, parse_receivers
from mailflow.settings.table import Table


@dataclass(frozen=True)
class FeedbackSettings:
    log: str = "/var/log/mail.log"  # the MTA's log, as syslog writes it
    # The key of the X-Mailflow-ID header (read from id_key_file); empty: no header is added.
    id_key: bytes = field(default=b"", repr=False)
    # Delivery agent's syslog name -> the outbound IP it sends from ("postfix-out2/smtp" =
    # "192.0.2.11"). Empty: every delivery is counted against the one [rbl] ip, if there is one.
    outbound_ips: Mapping[str, str] = field(default_factory=dict)
    receivers: ReceiverSettings = ReceiverSettings()  # receiver_* keys: settings/receivers.py


def parse_feedback(t: Table) -> FeedbackSettings:
    """STUB: the follower's helper fills it (the id key's reader with the complaint helper's)."""
    d = FeedbackSettings()
    settings = FeedbackSettings(log=t.text("log", d.log), receivers=parse_receivers(t))
    t.finish()
    return settings
