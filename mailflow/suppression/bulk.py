"""The bulk-mail gate: bulk mail must offer a working way out (RFC 2369, RFC 8058). Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping

from mailflow.forgery.rules import Finding

BULK_PRECEDENCE = {"bulk", "list", "junk"}
# `<` to the nearest `>` with no `<` between: each match attempt stops at the next `<`, so the
# search is linear (`<([^>]*)>` rescanned to the end from every `<` of a header without `>`).
_URI = re.compile(r"<([^<>]*)>")
ONE_CLICK = "list-unsubscribe=one-click"


def bulk_finding(by_name: Mapping[str, list[str]], recipients: int, min_recipients: int) -> Finding | None:
    """`by_name`: header values by lower-cased name (MessageFacts.by_name, rules.header_index)."""
    precedence = {v.strip().lower() for v in by_name.get("precedence", ())}
    is_bulk = bool(precedence & BULK_PRECEDENCE) or bool(by_name.get("list-id")) or recipients >= min_recipients
    if not is_bulk:
        return None
    uris = [uri.strip().lower() for value in by_name.get("list-unsubscribe", ()) for uri in _URI.findall(value)]
    https = any(uri.startswith("https://") for uri in uris)
    mailto = any(uri.startswith("mailto:") for uri in uris)
    if not (https or mailto):
        return Finding("missing_unsubscribe", "missing_unsubscribe",
                       "Bulk mail must carry a List-Unsubscribe: header with an https or mailto URI (RFC 2369); "
                       "rule bulk.missing_unsubscribe")
    one_click = any(v.replace(" ", "").lower() == ONE_CLICK for v in by_name.get("list-unsubscribe-post", ()))
    if https and not one_click:
        return Finding("missing_unsubscribe", "missing_unsubscribe",
                       "Bulk mail with an https List-Unsubscribe: must carry "
                       "List-Unsubscribe-Post: List-Unsubscribe=One-Click (RFC 8058); rule bulk.missing_unsubscribe")
    return None
