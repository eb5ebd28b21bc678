"""Rule and action names, shared by the config loader and the checks (no imports: no cycles)."""

RULES = ("envelope_domain", "from_header", "from_domain", "sender_header", "display_name", "lookalike",
         "duplicate_headers", "soft_signals")
ACTIONS = ("reject", "tempfail", "hold", "tag", "off")
DEFAULT_ACTIONS = {"envelope_domain": "reject", "from_header": "reject", "from_domain": "reject",
                   "sender_header": "reject", "display_name": "reject", "lookalike": "hold",
                   "duplicate_headers": "reject", "soft_signals": "tag"}
