"""Drive an Engine through one message as the milter adapter would, without an MTA."""

from __future__ import annotations

from mailflow.engine import Engine
from mailflow.model import Client, Decision

CLIENT = Client("client.example", "192.0.2.1", 40000)


def send_through(engine: Engine, sender: str = "bob@shop.example",
                 recipients: tuple[str, ...] = ("a@dest.example", "b@dest.example"),
                 queue_id: str = "4AB1C2D3E4") -> Decision:
    """An authenticated sender's message (MAIL, each RCPT, its From:, end of message) that no
    earlier stage refuses; the end-of-message decision."""
    message, mail = engine.mail(CLIENT, sender, sender)
    assert not mail.refuses, mail
    for rcpt in recipients:
        assert not engine.rcpt(CLIENT, message, rcpt).refuses
    engine.header(message, "From", sender)
    return engine.eom(CLIENT, message, queue_id=queue_id)
