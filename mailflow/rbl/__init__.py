"""DNSBL watcher: poll blocklists for the provider's outbound IPs and alert on transitions.

zones.py (what each zone's answers mean), query.py (asyncio lookups and self-tests),
state.py (pure transitions), alerts.py (log, webhook, e-mail), watch.py (cycles and the CLI's
report). Runs as its own process (`mailflow rbl watch`), never inside the milter.
"""
