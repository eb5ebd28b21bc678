"""The [feedback] keys of receivers' blocks (mailflow/feedback/receivers.py): how many recipients
refused by one receiving domain for one outbound IP, naming reputation or blocking, make a burst, and
how long that pair must then deliver without one before the block counts as lifted."""

from __future__ import annotations

from dataclasses import dataclass

from mailflow.settings.table import Table

MAX_BURST = 100


@dataclass(frozen=True)
class ReceiverSettings:
    # One refusal may be one recipient's own policy; ten recipients refused by one receiving domain
    # within ten minutes is that receiver refusing the IP (Microsoft's S3140, Gmail's 4.7.28, Yahoo's TSS04).
    burst: int = 10
    window_minutes: int = 10
    # Lifted after an hour of deliveries to that domain with no such refusal: receivers' own
    # blocks last hours (Yahoo asks for 4 h before a retry), so one lucky retry is not a delisting.
    clean_minutes: int = 60


def parse_receivers(t: Table) -> ReceiverSettings:
    """receiver_burst, receiver_window_minutes, receiver_clean_minutes of the [feedback] table."""
    d = ReceiverSettings()
    burst = t.integer("receiver_burst", d.burst, minimum=1)
    if burst > MAX_BURST:  # the follower keeps 2 x burst refusals per (IP, domain): bounded memory
        t.report("receiver_burst", f"at most {MAX_BURST}, got {burst}")
        burst = d.burst
    return ReceiverSettings(burst=burst,
                            window_minutes=t.integer("receiver_window_minutes", d.window_minutes, minimum=1),
                            clean_minutes=t.integer("receiver_clean_minutes", d.clean_minutes, minimum=1))
