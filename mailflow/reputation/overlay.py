"""The accounts' standings, kept in memory for the milter (as GrantOverlay keeps grants).

The milter never reads a standing on its hot path: `ReputationOverlay` holds every stored one,
re-read by a background thread every `store.refresh_ms` (mailflow/refresher.py) from
`Store.reputation_states()`, so a move of the ladder (or a reset) reaches every milter of a fleet
within that time. A stored value this version cannot read is logged once and ignored (the account
is treated as normal). While the store cannot be read the last standings stay, said once per outage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from mailflow.model import shown
from mailflow.refresher import StoreOverlay
from mailflow.reputation.model import NORMAL, STATES, Standing
from mailflow.store.base import Store

log = logging.getLogger("mailflow")

MAX_UNREADABLE = 10_000  # remembered bad values (so each is said once); beyond it, said again


class ReputationOverlay(StoreOverlay):
    what = "reputation standings"

    def __init__(self, store: Store, refresh_seconds: float) -> None:
        super().__init__(store, refresh_seconds, "mailflow-reputation")
        self._standings: dict[str, Standing] = {}  # above normal, as last read
        # Each stored value as last parsed: a refresh every refresh_ms re-reads every standing,
        # and parsing them all again (about 17 µs each, with their evidence) would cost a worker
        # a sixth of a core with 10,000 accounts above normal. Only changed values are parsed.
        self._parsed: dict[str, tuple[str, Standing | None]] = {}
        self._unreadable: set[tuple[str, str]] = set()  # (account, value) already logged
        self.refresh()  # the first read, at start: never inside a milter callback

    def standing(self, account: str) -> Standing | None:
        """The hot path: a dict lookup (None: normal)."""
        self._started()
        return self._standings.get(account)

    def standings(self) -> Mapping[str, Standing]:
        return dict(self._standings)

    def _read(self) -> dict[str, str]:
        return self.store.reputation_states()

    def _apply(self, stored: dict[str, str]) -> None:
        """Under the lock (StoreOverlay.refresh): changed values parsed, changes of standing logged."""
        parsed = {account: (value, known[1] if (known := self._parsed.get(account)) is not None
                            and known[0] == value else self._parse(account, value))
                  for account, value in stored.items()}
        self._parsed = parsed
        standings = {account: standing for account, (_, standing) in parsed.items()
                     if standing is not None and standing.state != NORMAL}
        for account in self._standings.keys() - standings.keys():
            log.info("reputation of %s: normal again (a step down or an admin's reset)", shown(account))
        for account, standing in standings.items():
            old = self._standings.get(account)
            if old is None or (old.state, old.since) != (standing.state, standing.since):
                log.info("reputation of %s: %s since %s (%s)", shown(account), standing.state,
                         time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(standing.since)), shown(standing.why, 200))
        self._standings = standings

    def _parse(self, account: str, value: str) -> Standing | None:
        standing = Standing.from_value(value) if isinstance(value, str) else None
        if standing is not None and standing.state in STATES:
            return standing
        if (account, value) not in self._unreadable:
            if len(self._unreadable) >= MAX_UNREADABLE:
                self._unreadable.clear()
            self._unreadable.add((account, value))
            log.warning("reputation standing of %s in the store is unreadable, ignored (normal): %s",
                        shown(account), shown(str(value), 120))
        return None
