"""`[metrics]`: where the milter, the DNSBL watcher and the log follower serve /metrics (and the milter /health)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from mailflow.settings import MetricsSettings
from mailflow.settings.table import Table

LISTEN_FORMS = '"127.0.0.1:PORT" or "[::1]:PORT"'


def parse_listen(text: str) -> tuple[str, int]:
    """"HOST:PORT" with an IP literal (a name would mean a DNS lookup at start), IPv6 in brackets.
    ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT ({LISTEN_FORMS}; PORT 1-65535)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: put an IPv6 address in brackets, like \"[::1]:{port}\"")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address ({LISTEN_FORMS})") from None
    return str(address), int(port)


def _listen(t: Table, key: str, allow_remote: bool) -> tuple[str, int] | None:
    text = t.text(key, "")
    if not text:
        return None
    try:
        host, port = parse_listen(text)
    except ValueError as exc:
        t.report(key, str(exc))
        return None
    if not ipaddress.ip_address(host).is_loopback and not allow_remote:
        t.report(key, f"{text!r} is not a loopback address: /metrics and /health would answer anyone who can "
                      "reach it; use 127.0.0.1 or ::1, or set metrics.allow_remote = true and firewall the port")
    return host, port


def parse_metrics(t: Table) -> MetricsSettings:
    allow_remote = t.flag("allow_remote", False)
    settings = MetricsSettings(listen=_listen(t, "listen", allow_remote), rbl_listen=_listen(t, "rbl_listen", allow_remote),
                               allow_remote=allow_remote)
    if settings.listen and settings.listen == settings.rbl_listen:
        t.report("rbl_listen", "is metrics.listen too; the milter and the DNSBL watcher each need a port of their own")
    settings = _feedback_listen(t, settings, allow_remote)
    t.finish()
    return settings


def _feedback_listen(t: Table, settings: MetricsSettings, allow_remote: bool) -> MetricsSettings:
    """`feedback_listen`: the log follower's own /metrics (metrics/receivers.py), a port of its own."""
    address = _listen(t, "feedback_listen", allow_remote)
    if address and address in (settings.listen, settings.rbl_listen):
        t.report("feedback_listen", "is metrics.listen or rbl_listen too; the follower needs a port of its own")
        address = None
    return replace(settings, feedback_listen=address)
