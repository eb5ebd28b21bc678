"""Arbitrary bytes through every stage of the Engine, on both stores (a SQLite file and a real
redis-server): a Decision every time, never an exception, and every reply one libmilter sends."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailflow.decisions import UNREADABLE_MACRO
from mailflow.model import Client, Decision, nameable
from tests.helpers.adversarial import rig, reply_problems, wire

EXAMPLES = 150  # per store: about 2 s each in CI

junk = st.one_of(st.binary(max_size=300).map(wire), st.text(max_size=300),
                 st.sampled_from(["", "<>", "%", "%%s", "\r\n", "\x00", "=?utf-8?q?=FF?=", "a" * 1000]))
addresses = st.one_of(junk, st.builds(lambda local: f"<{local}@dest.example>", junk),
                      st.builds(lambda local, domain: f"{local}@{domain}", junk, junk),
                      st.sampled_from(["<bob@shop.example>", "<x@optout.example>", "bob@shop.example"]))
clients = st.builds(Client, address=st.one_of(st.none(), st.text(max_size=40),
                                               st.sampled_from(["127.0.0.1", "::1", "198.51.100.7", "10.1.2.3"])),
                    port=st.one_of(st.none(), st.integers(0, 65535)))
# pymilter decodes macros strictly: a login is valid UTF-8 (no surrogate escapes), or unreadable.
logins = st.one_of(st.none(), st.text(max_size=300), st.sampled_from([UNREADABLE_MACRO, "bob@shop.example"]))
header_names = st.one_of(st.sampled_from(["From", "Sender", "Reply-To", "Date", "Received", "List-Id", "Precedence",
                                          "List-Unsubscribe", "List-Unsubscribe-Post", "Resent-From",
                                          "X-PHP-Originating-Script", "Message-ID"]), junk)
messages = st.tuples(clients, addresses, logins, st.lists(addresses, max_size=4),
                     st.lists(st.tuples(header_names, st.one_of(junk, addresses)), max_size=8))


def sendable(decision: Decision) -> bool:
    return not reply_problems(decision) and all(map(nameable, decision.remove_recipients)) and all(
        name.isascii() and value.isascii() for name, value in decision.add_headers)


def test_arbitrary_input_always_gets_a_sendable_decision(store_url: str) -> None:
    with rig(store_url) as made:
        engine = made.engine

        @settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
        @given(messages)
        def one_message(message: tuple[Client, str, str | None, list[str], list[tuple[str, str]]]) -> None:
            client, sender, login, recipients, headers = message
            facts, decision = engine.mail(client, sender, login)
            decisions = [decision]
            if not decision.refuses:  # as the MTA does: a refused MAIL ends the transaction
                for recipient in recipients:
                    decisions.append(engine.rcpt(client, facts, recipient))
                for name, value in headers:
                    engine.header(facts, name, value)
                decisions.append(engine.eom(client, facts))
            for made_decision in decisions:
                assert isinstance(made_decision, Decision)
                assert sendable(made_decision), made_decision

        one_message()
