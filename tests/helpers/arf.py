"""ARF reports (RFC 5965) built the way the big feedback loops send them, for the complaint tests.

Shapes, from the loops' published samples: Yahoo's CFL (Version 0.1, Received-Date, the whole
original as message/rfc822), AOL's (the original's recipients redacted), Microsoft's JMRP
(Version 1.0, no Original-Rcpt-To, recipients redacted), Mail.ru's (the original base64-encoded),
and the generic RFC 5965 forms: text/rfc822-headers with only the headers, or no third part.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from mailflow.suppression.keygen import new_key

BOUNDARY = "----=_arf_boundary_0123"


def write_id_key(path: Path) -> Path:
    """An X-Mailflow-ID key file as `mailflow keygen` writes one (0600)."""
    path.write_text(new_key() + "\n")
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    return path


@dataclass
class Original:
    """The complained-about message, as the milter let it out."""

    sender: str = "news@shop.example"
    to: str = "reader@mail.example"
    message_id: str = "<orig-1@shop.example>"
    mailflow_id: str | None = None  # the X-Mailflow-ID value, when the receiver kept it
    subject: str = "Spring sale"
    body: bytes = b"Buy now.\r\n"
    extra: list[tuple[str, str]] = field(default_factory=list)

    def headers(self) -> bytes:
        lines = [("Received", "from mta.provider.example (mta.provider.example [192.0.2.10])\r\n\tby mx.mail.example"),
                 ("From", f"Shop <{self.sender}>"), ("To", self.to), ("Subject", self.subject),
                 ("Message-ID", self.message_id), ("Date", "Fri, 27 Nov 2026 03:00:00 +0000"), *self.extra]
        if self.mailflow_id is not None:
            lines.append(("X-Mailflow-ID", self.mailflow_id))
        return b"".join(f"{name}: {value}\r\n".encode("utf-8") for name, value in lines if value is not None)

    def message(self) -> bytes:
        return self.headers() + b"\r\n" + self.body


@dataclass
class ReportShape:
    """One feedback loop's way of writing a report."""

    user_agent: str
    version: str
    date_field: str = "Arrival-Date"
    third: str | None = "message/rfc822"  # or text/rfc822-headers, or None: no original
    encoding: str = "7bit"  # of the third part: 7bit, 8bit, base64
    rcpt_to: bool = True  # Original-Rcpt-To given
    redact_to: bool = False  # the original's To: redacted
    report_from: str = "feedback@loop.example"


YAHOO = ReportShape("Yahoo!-Mail-Feedback/2.0", "0.1", date_field="Received-Date", report_from="feedback@arf.mail.yahoo.com")
AOL = ReportShape("AOL SComp", "0.1", date_field="Received-Date", rcpt_to=False, redact_to=True,
                  report_from="scomp@aol.net")
MICROSOFT = ReportShape("Microsoft Junk Mail Reporting Program", "1.0", rcpt_to=False, redact_to=True,
                        report_from="staff@hotmail.com")
MAILRU = ReportShape("Mail.Ru FBL", "1", encoding="base64", report_from="fbl@corp.mail.ru")
HEADERS_ONLY = ReportShape("SomeGenerator/1.0", "1", third="text/rfc822-headers")
NO_ORIGINAL = ReportShape("SomeGenerator/1.0", "1", third=None)
EIGHT_BIT = ReportShape("SomeGenerator/1.0", "1", encoding="8bit")
SHAPES = {"yahoo": YAHOO, "aol": AOL, "microsoft": MICROSOFT, "mailru": MAILRU, "headers_only": HEADERS_ONLY,
          "no_original": NO_ORIGINAL, "eight_bit": EIGHT_BIT}


def report(original: Original, shape: ReportShape = YAHOO, feedback_type: str | None = "abuse",
           report_id: str | None = "<report-1@loop.example>", fields: list[tuple[str, str]] | None = None) -> bytes:
    """A whole report: the human part, the machine part, the original (as the shape sends it)."""
    if shape.redact_to:
        original = dataclasses.replace(original, to="redacted")
    machine = [("Feedback-Type", feedback_type), ("User-Agent", shape.user_agent), ("Version", shape.version),
               ("Original-Mail-From", f"<{original.sender}>"),
               ("Original-Rcpt-To", f"<{original.to}>" if shape.rcpt_to else None),
               (shape.date_field, "Fri, 27 Nov 2026 03:00:05 +0000"), ("Source-IP", "192.0.2.10"),
               ("Reported-Domain", original.sender.rpartition("@")[2]), *(fields or [])]
    machine_text = "".join(f"{name}: {value}\r\n" for name, value in machine if value is not None)
    head = [f"From: <{shape.report_from}>", "To: <fbl@provider.example>", "Subject: FW: complaint",
            "Date: Fri, 27 Nov 2026 03:10:00 +0000", "MIME-Version: 1.0",
            f'Content-Type: multipart/report; report-type=feedback-report; boundary="{BOUNDARY}"']
    if report_id is not None:
        head.insert(0, f"Message-ID: {report_id}")
    out = "\r\n".join(head).encode() + b"\r\n\r\nThis is a multi-part message in MIME format.\r\n\r\n"
    out += (f"--{BOUNDARY}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            "This is an email abuse report for an email message received from IP 192.0.2.10.\r\n\r\n").encode()
    out += f"--{BOUNDARY}\r\nContent-Type: message/feedback-report\r\n\r\n{machine_text}\r\n".encode()
    if shape.third is not None:
        body = original.headers() if shape.third == "text/rfc822-headers" else original.message()
        if shape.encoding == "base64":
            body = base64.encodebytes(body).replace(b"\n", b"\r\n")
        out += (f"--{BOUNDARY}\r\nContent-Type: {shape.third}\r\nContent-Disposition: inline\r\n"
                f"Content-Transfer-Encoding: {shape.encoding}\r\n\r\n").encode() + body + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()
