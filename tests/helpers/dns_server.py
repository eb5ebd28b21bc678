"""A DNS server for tests, on a loopback UDP port, answering from a table the test controls.

Records map a lower-case name (no trailing dot) to a dict of type -> answer, where an answer is
a list of strings (A or TXT data), or "SERVFAIL", or "DROP" (no answer at all: a timeout).
Names not in the table get NXDOMAIN. A `wildcard` zone answers one set of records for every
name under it (a dead zone listing the world).
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        data, sock = self.request
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.server.queries += 1
        answer = self.server.lookup(name, rdtype)
        if answer == "DROP":
            return
        response = dns.message.make_response(query)
        if answer == "SERVFAIL":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif answer is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif answer:
            values = [f'"{v}"' for v in answer] if rdtype == "TXT" else answer
            response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", rdtype, values))
        sock.sendto(response.to_wire(), self.client_address)


class _Server(socketserver.UDPServer):
    # One thread answers every query in turn: answers are instant, and a thread per packet
    # would make the server, not the client, what a benchmark measures.
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.records: dict[str, dict[str, Any]] = {}
        self.wildcards: dict[str, dict[str, Any]] = {}
        self.queries = 0

    def lookup(self, name: str, rdtype: str) -> Any:
        entry = self.records.get(name)
        if entry is None:
            for zone, wildcard in self.wildcards.items():
                if name.endswith("." + zone):
                    entry = wildcard
                    break
        if entry is None:
            return None
        return entry.get(rdtype, [])


@contextmanager
def dns_server() -> Iterator[_Server]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
