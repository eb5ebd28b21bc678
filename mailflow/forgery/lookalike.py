"""Confusable domains: UTS #39 skeletons (ICU's SpoofChecker) plus the ASCII swaps phishers use.

ICU maps `m` to `rn`, `1` and `I` to `l`, `0` to `O` and Cyrillic `а` to Latin `a`; on top of
that the skeleton is lower-cased (so `0` and `o` meet) and `vv` folded to `w`. Two domains are
confusable when their organisational domains differ but their skeletons are equal.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import icu
import idna

from mailflow.forgery.ownership import organisational_domain

_CHECKER = icu.SpoofChecker()


@functools.lru_cache(maxsize=65536)
def skeleton(domain: str) -> str:
    text = domain.lower()
    try:
        text = idna.decode(text)  # compare what the reader sees: U-labels
    except idna.IDNAError:
        pass
    return str(_CHECKER.getSkeleton(0, text)).lower().replace("vv", "w")


class LookalikeIndex:
    """Skeletons of the domains worth protecting: brands, and every domain hosted here."""

    def __init__(self, protected: Iterable[tuple[str, str | None]]) -> None:
        # skeleton -> (organisational domain, owning account or None for a brand)
        self._by_skeleton: dict[str, tuple[str, str | None]] = {}
        for domain, owner in protected:
            org = organisational_domain(domain)
            if org:
                self._by_skeleton.setdefault(skeleton(org), (org, owner))

    def imitated(self, domain: str, account: str) -> str | None:
        """The protected domain `domain` imitates, unless it is that domain or the account owns it."""
        org = organisational_domain(domain)
        if org is None:
            return None
        hit = self._by_skeleton.get(skeleton(org))
        if hit is None:
            return None
        target, owner = hit
        if target == org or owner == account:
            return None
        return target
