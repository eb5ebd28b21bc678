"""The accounts' standings, kept in memory for the milter (as GrantOverlay keeps grants).

The milter never reads a standing on its hot path: `ReputationOverlay` holds every stored one,
re-read by a background thread every `store.refresh_ms` (mailflow/refresher.py) from
`Store.reputation_states()`, so a move of the ladder (or a reset) reaches every milter of a fleet
within that time. A stored value this version cannot read is logged once and ignored (the account
is treated as normal). While the store cannot be read the last standings stay, said once per outage.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from mailflow.model import shown
from mailflow.refresher import Refresher
from mailflow.reputation.model import NORMAL, STATES, Standing
from mailflow.store.base import Store, StoreError

log = logging.getLogger("mailflow")

MAX_UNREADABLE = 10_000  # remembered bad values (so each is said once); beyond it, said again


class ReputationOverlay:
    def __init__(self, store: Store, refresh_seconds: float) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._standings: dict[str, Standing] = {}  # above normal, as last read
        self._unreadable: set[tuple[str, str]] = set()  # (account, value) already logged
        self._failing = False
        self._refresher = Refresher(self, refresh_seconds, "mailflow-reputation")
        self.refresh()  # the first read, at start: never inside a milter callback

    def standing(self, account: str) -> Standing | None:
        """The hot path: a dict lookup (None: normal)."""
        if not self._refresher.started:
            self._refresher.start()
        return self._standings.get(account)

    def standings(self) -> Mapping[str, Standing]:
        return dict(self._standings)

    def start(self) -> None:
        """Refresh from now on, before the first message (the milter worker calls it at start)."""
        self._refresher.start()

    def stop(self) -> None:
        self._refresher.stop()

    def refresh(self) -> None:
        with self._lock:
            try:
                stored = self.store.reputation_states()
            except StoreError as exc:  # said once per outage: this runs every refresh_ms
                if not self._failing:
                    log.warning("cannot refresh reputation standings from the store, keeping the last ones: %s", exc)
                self._failing = True
                return
            if self._failing:
                log.warning("reputation standings read from the store again")
                self._failing = False
            standings = {account: standing for account, value in stored.items()
                         if (standing := self._read(account, value)) is not None and standing.state != NORMAL}
            for account in self._standings.keys() - standings.keys():
                log.info("reputation of %s: normal again (no standing in the store)", shown(account))
            for account, standing in standings.items():
                old = self._standings.get(account)
                if old is None or (old.state, old.since) != (standing.state, standing.since):
                    log.info("reputation of %s: %s since %d (%s)", shown(account), standing.state,
                             int(standing.since), shown(standing.why, 200))
            self._standings = standings

    def _read(self, account: str, value: str) -> Standing | None:
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
