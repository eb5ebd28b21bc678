"""Store URLs: the schemes mailflow knows, their syntax, and hiding the password they may carry.

Nothing here ever puts a password into a message: errors about a URL quote it redacted.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

from mailflow.urls_cluster import CLUSTER_SCHEMES, cluster_problem
from mailflow.urls_sentinel import SENTINEL_SCHEMES, parse_sentinel_url

STORE_SCHEMES = ("sqlite", "redis", "rediss", "unix", *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)
_REDIS_QUERY_KEYS = {"db", "password", "username", "health_check_interval",
                     "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname", "protocol",
                     "client_name", "decode_responses", "encoding"}
REDIS_QUERY_KEYS = frozenset(_REDIS_QUERY_KEYS)
_SECRET_QUERY_KEYS = ("password=", "sentinel_password=", "pass=", "pw=", "token=", "key=")
_USERINFO_SPECIALS = "/?#@[]"
_BRACKETED = re.compile(r"\[[0-9A-Fa-f:.]{2,45}\](?::[0-9]{0,5})?")
_ENCODE_HINT = "/ as %2F, # as %23, ? as %3F, @ as %40, [ as %5B, ] as %5D"


def redact_url(url: str) -> str:
    """Logs and screens must not show a store password, however it is written: `user:pw@`,
    unencoded `/`, `#`, `?`, `@`, spaces or quotes in the password, or `?password=…`. The whole
    string is the URL: nothing in it ends the userinfo but its last `@`."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme == "sqlite":
        return url
    return f"{scheme}://{_redact_rest(rest, whole=True)}"


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


def _redact_rest(rest: str, whole: bool = False) -> str:
    """`rest` is what follows `scheme://` (up to the next space or quote unless `whole`). A user
    name stays only when it is plainly one; anything else before the last `@` is ***. With
    `whole`, a `password=` value runs to the end (an unencoded `&` or `#` in it is no boundary),
    and a URL where that value and the userinfo overlap is all ***."""
    at = rest.rfind("@")
    lowered = rest.lower()
    if whole and at >= min((i for i in (_secret_value(lowered, k, 0) for k in _SECRET_QUERY_KEYS) if i >= 0),
                          default=len(rest)):
        return "***"
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        plain = colon and not any(c in _USERINFO_SPECIALS for c in user)
        rest = (f"{user}:***" if plain else "***") + rest[at:]
        lowered = rest.lower()
    for key in _SECRET_QUERY_KEYS:
        start = 0
        while (start := _secret_value(lowered, key, start)) >= 0:
            stop = len(rest) if whole else min(
                (i for i in (rest.find("&", start), rest.find(";", start)) if i >= 0), default=len(rest))
            rest, lowered = rest[:start] + "***" + rest[stop:], lowered[:start] + "***" + lowered[stop:]
            start += 3
    return rest


def _secret_value(lowered: str, key: str, start: int) -> int:
    """Where the value of the next `?key=`/`&key=`/`;key=` from `start` begins, or -1."""
    while (found := lowered.find(key, start)) >= 0:
        start = found + len(key)
        if found > 0 and lowered[found - 1] in "?&;":
            return start
    return -1


def store_url_problem(url: str) -> str | None:
    """What is wrong with a store URL's syntax, or None. The answer quotes the URL redacted and never
    a host or path when the userinfo may have spilt into them: a password is never shown, even
    in part, and a URL redis-py would read with another host is refused, not guessed at."""
    shown = redact_url(url)
    scheme, sep, rest = url.partition("://")
    refused = cluster_problem(url, REDIS_QUERY_KEYS) if sep else None
    if refused:
        return f"{shown!r}: {refused}"
    if not sep or scheme not in STORE_SCHEMES:
        return (f"{shown!r}: expected sqlite:///PATH, redis://HOST:PORT/DB, rediss://…, unix:///PATH"
                ", redis+sentinel://HOST:PORT,…/MASTER_NAME or redis+cluster://HOST:PORT,…")
    if any(ord(c) < 32 or ord(c) == 127 or c.isspace() for c in url):
        return f"{shown!r}: a store URL has no spaces or control characters"
    if scheme in CLUSTER_SCHEMES:  # checked whole by cluster_problem above
        return None
    if scheme in SENTINEL_SCHEMES:
        parsed = parse_sentinel_url(url, REDIS_QUERY_KEYS)
        return f"{shown!r}: {parsed}" if isinstance(parsed, str) else None
    if scheme == "sqlite":
        if not rest or rest.endswith("/"):
            return f"{shown!r}: names no database file (sqlite:///ABSOLUTE/PATH.db)"
        if rest.startswith("//"):  # SQLite would read the first path part as a host: "invalid uri authority"
            return f"{shown!r}: one slash too many: an absolute path is sqlite:///ABSOLUTE/PATH.db (three)"
        return None
    # urllib and redis-py end the authority at the first / ? or #, and the userinfo at its last @:
    # an @ after that, or a second @, means a password with an unencoded special character.
    authority_end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo = rest[:rest.rfind("@", 0, authority_end) + 1]
    if "@" in rest[authority_end:] or userinfo.count("@") > 1 or "[" in userinfo or "]" in userinfo:
        return f"{shown!r}: the user or password holds a character that must be percent-encoded ({_ENCODE_HINT})"
    if "#" in rest:
        return f"{shown!r}: a store URL has no #fragment (percent-encode {_ENCODE_HINT})"
    hostport = rest[len(userinfo):authority_end]
    if ("[" in hostport or "]" in hostport) and not _BRACKETED.fullmatch(hostport):
        return f"{shown!r}: the host is not a name, an IPv4 address or an [IPv6] address in brackets"
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        if "NFKC" in str(exc):  # a character like a full-width ＃ that urllib refuses
            return f"{shown!r}: the user or password holds a character that must be percent-encoded ({_ENCODE_HINT})"
        return f"{shown!r}: the host is not a name, an IPv4 address or an [IPv6] address in brackets"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return f"{shown!r}: the port is not a number from 1 to 65535"
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        return f"{shown!r}: the query is not name=value pairs"
    for name, value in query:
        if name not in _REDIS_QUERY_KEYS:
            # A name may be the tail of a password holding an unencoded & : only a plain one is quoted.
            secret = any(k in parts.query.lower() for k in _SECRET_QUERY_KEYS)
            named = f" {name!r}" if name.isidentifier() and name.isascii() and not secret else ""
            return f"{shown!r}: unknown option{named} (db, password, username, socket_timeout, …)"
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
        return f"{shown!r}: the path must be a database number (redis://HOST:PORT/0)"
    return None
