"""Sliding-window limits: at most N in any window of the period ("600/hour sliding").

A token bucket of 600/hour lets an idle account send 600 at once and then 600 more over the hour
(about 1,200 in its first hour); an AUP's "600 emails/hour" reads as never more than 600 in any
hour. A sliding window holds that exactly, with counts per slot of 1/SLOTS of the period (a
minute for an hourly limit): a send at time s is allowed only when everything counted in the
slots from SLOTS slots before s's slot up to s's slot, plus the send, is at most N. Those slots
cover [s - period, s] whatever s is, so no window of the period ever holds more than N. The price
of slots: a count leaves the window between one period and one period plus one slot after it was
made (61 minutes for an hourly limit), so an account sending steadily at N per period is
sometimes told to wait for up to one slot.

The Redis Lua script (store/lua/debit.lua) mirrors `slot_of` and which slots `window_level`
counts; a slot's count leaves SLOTS + 1 slots after the slot began.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mailflow.ratelimit.limits import PERIOD_SECONDS, Limit

SLOTS = 60  # slots per period; debit.lua has the same number


def slot_of(limit: Limit, now: float) -> int:
    """The slot `now` falls in (slots are counted from the epoch)."""
    return math.floor(now * SLOTS / PERIOD_SECONDS[limit.period])


def first_counted(limit: Limit, now: float) -> int:
    return slot_of(limit, now) - SLOTS


class Window(float):
    """A sliding window's level: the count in the window now. It is a float so it travels where a
    bucket's level does (the stores' replies, the engine, the RCPT-stage memory in recent.py);
    it also knows when each part of the count leaves the window, and when a count made now
    would, which "try again in" needs."""

    expiries: tuple[tuple[float, float], ...]  # (seconds from the reading until it leaves, count), soonest first
    current_end: float  # seconds from the reading until a count made then would leave
    slot: float  # a slot's length in seconds

    def __new__(cls, expiries: tuple[tuple[float, float], ...] = (), current_end: float = 0.0,
                slot: float = 0.0) -> Window:
        window = super().__new__(cls, sum(count for _, count in expiries))
        window.expiries, window.current_end, window.slot = expiries, current_end, slot
        return window

    def aged(self, seconds: float) -> Window:
        """The same window `seconds` later, with nothing sent meanwhile."""
        end = self.current_end - seconds
        if end <= 0 and self.slot > 0:  # a later slot is the current one by then
            end += (math.floor(-end / self.slot) + 1) * self.slot
        return Window(tuple((left - seconds, count) for left, count in self.expiries if left - seconds > 0),
                      end, self.slot)

    def seconds_until_room(self, excess: float) -> int:
        """Whole seconds until `excess` has left the window (0 when there is nothing to wait for).
        What the window does not hold yet (recipients of the message in flight, to be counted in
        the current slot) leaves with the current slot."""
        if excess <= 1e-9:
            return 0
        gone = 0.0
        for left, count in self.expiries:
            gone += count
            if gone >= excess - 1e-9:
                return max(1, math.ceil(left))
        return max(1, math.ceil(self.current_end))

    @classmethod
    def from_text(cls, text: str) -> Window:
        """debit.lua's answer: LEVEL|NOW:PERIOD|SLOT,COUNT,... (the slots it counted, as stored)."""
        _, clock, stored = text.split("|", 2)
        now, _, period = clock.partition(":")
        values = stored.split(",") if stored else []
        slots = {int(values[i]): float(values[i + 1]) for i in range(0, len(values) - 1, 2)}
        return _from_slots(slots, float(period), float(now))


def window_level(slots: Mapping[int, float], limit: Limit, now: float) -> Window:
    """The window at `now` from its slots' counts (slot -> count; older slots are ignored, and a
    slot ahead of `now`, written by a clock further on, is counted)."""
    return _from_slots(slots, PERIOD_SECONDS[limit.period], now)


def _from_slots(slots: Mapping[int, float], period: float, now: float) -> Window:
    """Slot j's count leaves at (j + SLOTS + 1) slots from the epoch (see the module's docstring)."""
    current = math.floor(now * SLOTS / period)
    return Window(tuple(((slot + SLOTS + 1) * period / SLOTS - now, count)
                        for slot, count in sorted(slots.items()) if slot >= current - SLOTS and count > 0),
                  (current + SLOTS + 1) * period / SLOTS - now, period / SLOTS)


def level_from_reply(text: str) -> float:
    """A level as a store answered it: a bucket's number, or a window's (Window.as_text)."""
    return Window.from_text(text) if "|" in text else float(text)
