"""The time of a syslog line: classic stamps (`Nov 22 10:00:01`, no year) and RFC 3339 ones
(`2026-11-22T10:00:01.123456+00:00`, rsyslog's and Postfix's own `maillog_file`). Read by the
replay harness (replay/postfix_log.py) and the delivery-feedback parser (feedback/logline.py).

A classic stamp carries the host's local time without a zone; it is read as UTC (an hour's shift
at most moves counts to the neighbouring hour bucket).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime, timezone

_SYSLOG_STAMP = re.compile(r"^(?P<stamp>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d)")
_ISO_STAMP = re.compile(r"^(?P<stamp>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)")
_FRACTION = re.compile(r"\.\d{1,9}")
_HALF_YEAR = 183 * 86400
_FUTURE_SLACK = 2 * 86400  # hosts' clocks and time zones: a stamp this far ahead is last year's


def parse_timestamp(line: str, year: int) -> float | None:
    """The stamp at the start of `line` as unix time (a classic one in `year`), or None."""
    iso = _ISO_STAMP.match(line)
    if iso:
        try:
            stamp = datetime.fromisoformat(iso.group("stamp").replace("Z", "+00:00"))
        except ValueError:  # shaped like a stamp, but month 13 or the like
            return None
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)).timestamp()
    classic = _SYSLOG_STAMP.match(line)
    if classic:
        try:
            stamp = datetime.strptime(f"{year} {classic.group('stamp')}", "%Y %b %d %H:%M:%S")
        except ValueError:  # "Feb 30", "Foo 12"
            return None
        return stamp.replace(tzinfo=timezone.utc).timestamp()
    return None


class Stamps:
    """Reads the stamps of one log in order: classic stamps get their year from the clock at the
    first one (a December log read in January is last year's), then a jump back by half a year is
    the December→January rollover. A line without a stamp takes the last one seen (or the clock).
    Consecutive lines share a stamp (one second): the last one is remembered, not parsed again."""

    def __init__(self, now: Callable[[], float] = time.time, year: int | None = None) -> None:
        self._now = now
        self.year = year
        self._key = ""
        self._value = 0.0
        self._last_classic: float | None = None
        self.last: float | None = None

    def at(self, line: str) -> float:
        first = line[:1]
        fraction = 0.0
        if first.isdigit():
            # RFC 3339 (`2026-11-22T10:00:01.123456+00:00`): every line has its own microseconds,
            # so the key is the stamp without them, and they are added to what the key gives.
            key = line[:19]
            digits = _FRACTION.match(line, 19)
            if digits is not None:
                fraction = float("0" + digits.group())
                key += line[digits.end():digits.end() + 6]
            else:
                key = line[:25]
        elif first.isupper():
            key = line[:15]
        else:
            key = ""
        if key and key == self._key:
            self.last = self._value + fraction
            return self.last
        value = self._parse(key) if key else None
        if value is None:
            return self.last if self.last is not None else self._now()
        self._key, self._value = key, value
        self.last = value + fraction
        return self.last

    def _parse(self, line: str) -> float | None:
        if not line[:1].isupper():
            return parse_timestamp(line, 1970)
        if self.year is None:
            now = self._now()
            self.year = time.gmtime(now).tm_year
            value = parse_timestamp(line, self.year)
            if value is not None and value > now + _FUTURE_SLACK:
                self.year -= 1
        value = parse_timestamp(line, self.year)
        if value is not None and self._last_classic is not None and value < self._last_classic - _HALF_YEAR:
            self.year += 1  # Dec 31 → Jan 1
            value = parse_timestamp(line, self.year)
        if value is not None:
            self._last_classic = value
        return value
