"""Store URLs: the schemes mailflow knows, their syntax, and hiding the password they may carry.

Nothing here ever puts a password into a message: errors about a URL quote it redacted.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

STORE_SCHEMES = ("sqlite", "redis", "rediss", "unix")
_REDIS_QUERY_KEYS = {"db", "password", "username", "health_check_interval",
                     "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname", "protocol",
                     "client_name", "decode_responses", "encoding"}
_SECRET_QUERY_KEYS = ("password=", "pass=", "pw=", "token=", "key=")


def redact_url(url: str) -> str:
    """Logs and screens must not show a store password, however it is written: `user:pw@`,
    unencoded `/`, `#` or `@` in the password, or `?password=`."""
    return redact_text(url)


def redact_text(text: str) -> str:
    """Every `scheme://user:password@` and `?password=…` in free text, masked. Linear in the text
    (it also runs on log lines that carry client input), and a no-op without `://`."""
    if "://" not in text:
        return text
    out, pos = [], 0
    while (mark := text.find("://", pos)) >= 0:
        end = mark + 3
        while end < len(text) and not text[end].isspace() and text[end] not in "'\"<>()[]{},;`":
            end += 1
        out.append(text[pos:mark + 3])
        # A file path may hold an "@"; it carries no password.
        out.append(text[mark + 3:end] if text.endswith("sqlite", 0, mark) else _redact_rest(text[mark + 3:end]))
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _redact_rest(rest: str) -> str:
    """`rest` is what follows `scheme://` up to the next space or quote."""
    at = rest.rfind("@")
    if at >= 0:
        userinfo = rest[:at]
        user, colon, _ = userinfo.partition(":")
        rest = (f"{user}:***" if colon else ("***" if "/" in userinfo else userinfo)) + rest[at:]
    lowered = rest.lower()
    for key in _SECRET_QUERY_KEYS:
        start = 0
        while (found := lowered.find(key, start)) >= 0:
            start = found + len(key)
            if found == 0 or lowered[found - 1] not in "?&;":
                continue
            stop = min((i for i in (rest.find("&", start), rest.find(";", start), rest.find("#", start)) if i >= 0),
                       default=len(rest))
            rest, lowered = rest[:start] + "***" + rest[stop:], lowered[:start] + "***" + lowered[stop:]
    return rest


def store_url_problem(url: str) -> str | None:
    """What is wrong with a store URL's syntax, or None. The answer never quotes a password."""
    shown = redact_url(url)
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in STORE_SCHEMES:
        return f"{shown!r}: expected sqlite:///PATH, redis://HOST:PORT/DB, rediss://… or unix:///PATH"
    if any(ord(c) < 32 or ord(c) == 127 or c.isspace() for c in url):
        return f"{shown!r}: a store URL has no spaces or control characters"
    if scheme == "sqlite":
        if not rest or rest.endswith("/"):
            return f"{shown!r}: names no database file (sqlite:///ABSOLUTE/PATH.db)"
        return None
    parts = urlsplit(url)
    if "@" in rest.split("?", 1)[0] and "@" not in parts.netloc and scheme != "unix":
        return (f"{shown!r}: the user or password holds a character that must be percent-encoded "
                "(/ as %2F, # as %23, ? as %3F, @ as %40)")
    try:
        port = parts.port
    except ValueError:
        return f"{shown!r}: the port is not a number from 1 to 65535"
    if port == 0:
        return f"{shown!r}: the port is not a number from 1 to 65535"
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        return f"{shown!r}: the query is not name=value pairs"
    for name, value in query:
        if name not in _REDIS_QUERY_KEYS:
            return f"{shown!r}: unknown option {name!r} (db, password, username, socket_timeout, …)"
        if name == "db" and not value.isdigit():
            return f"{shown!r}: db must be a database number"
    if scheme == "unix":
        if not parts.path or parts.path == "/":
            return f"{shown!r}: names no socket (unix:///run/redis/redis.sock?db=0)"
        return None
    if not parts.hostname:
        return f"{shown!r}: names no host (redis://HOST:PORT/DB)"
    db = parts.path.lstrip("/")
    if db and not (db.isdigit() and db.isascii()):
        return f"{shown!r}: the path must be a database number (redis://HOST:PORT/0), got /{db}"
    return None
