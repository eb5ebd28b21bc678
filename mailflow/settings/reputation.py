"""[reputation] of mailflow.toml: the ladder's rules and mode (mailflow/reputation/)."""

from __future__ import annotations

from dataclasses import dataclass

from mailflow.settings.table import Table


@dataclass(frozen=True)
class ReputationSettings:
    """STUB: the ladder's helper fills it (rules, per-account overrides, contact, factor)."""

    enabled: bool = False  # on when the config has a [reputation] table
    mode: str = "enforce"  # enforce | monitor


def parse_reputation(t: Table, present: bool) -> ReputationSettings:
    d = ReputationSettings()
    settings = ReputationSettings(enabled=present, mode=t.choice("mode", d.mode, ("enforce", "monitor")))
    t.finish()
    return settings
