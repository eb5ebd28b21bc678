"""The store's feedback and standings, in memory: the ladder without a server (the replay shadow,
the tests). The same methods and meaning as Store's (store/base.py); unique recipients exact."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence


class MemoryFeedback:
    def __init__(self) -> None:
        self.counts: dict[tuple[int, str], dict[str, int]] = {}  # (hour, account) -> field -> n
        self.recipients: dict[tuple[int, str], set[str]] = {}
        self.standings: dict[str, str] = {}
        self._taken: dict[tuple[str, str], int] = {}  # (source, account) -> the last seq it took

    def add_feedback(self, source: str | None, seq: int, counts: Mapping[tuple[int, str, str], int],
                     recipients: Mapping[tuple[int, str], Collection[str]]) -> None:
        accounts = {account for _, account, _ in counts} | {account for _, account in recipients}
        if source is not None:
            fresh = {a for a in accounts if self._taken.get((source, a), -1) < seq}
            for account in fresh:
                self._taken[(source, account)] = seq
            accounts = fresh
        for (hour, account, name), n in counts.items():
            if account in accounts:
                by_field = self.counts.setdefault((hour, account), {})
                by_field[name] = by_field.get(name, 0) + n
        for (hour, account), digests in recipients.items():
            if account in accounts:
                self.recipients.setdefault((hour, account), set()).update(digests)

    def feedback_counts(self, account: str, hours: Sequence[int]) -> dict[int, dict[str, int]]:
        return {hour: dict(self.counts[(hour, account)]) for hour in hours if (hour, account) in self.counts}

    def unique_recipients(self, account: str, hours: Sequence[int]) -> int:
        return len(set().union(*(self.recipients.get((hour, account), set()) for hour in hours)))

    def feedback_accounts(self, hours: Sequence[int]) -> list[str]:
        wanted = set(hours)
        return sorted({account for hour, account in self.counts if hour in wanted})

    def reputation_states(self) -> dict[str, str]:
        return dict(self.standings)

    def swap_reputation(self, account: str, expected: str | None, new: str | None) -> bool:
        if self.standings.get(account) != expected:
            return False
        if new is None:
            self.standings.pop(account, None)
        else:
            self.standings[account] = new
        return True
