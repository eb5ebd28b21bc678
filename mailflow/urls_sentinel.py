"""Sentinel store URLs (the `limits` library's spelling); the host list parser Cluster URLs share.

    redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]…]/MASTER_NAME[/DB][?OPTIONS]
    rediss+sentinel://…   TLS to the sentinels and to the master, with rediss://'s ssl_* options

The user and password are the master's (as in redis://). Sentinels with their own `requirepass`
take `sentinel_password=` (and `sentinel_username=`) in the query. A sentinel's port is 26379
unless given. Parsing is linear in the URL and never guesses: anything else is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
MAX_SENTINELS = 16
SENTINEL_QUERY_KEYS = ("sentinel_password", "sentinel_username")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\]")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class SentinelURL:
    tls: bool
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    query: tuple[tuple[str, str], ...] = ()  # the other options, as redis:// takes them

    def master_url(self, host: str, port: int) -> str:
        """The plain redis:// (rediss://) URL of the master at HOST:PORT, with this URL's options."""
        auth = ""
        if self.username is not None or self.password is not None:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"
        shown = f"[{host}]" if ":" in host else host
        query = f"?{urlencode(self.query)}" if self.query else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}{shown}:{port}/{self.db}{query}"


def parse_hosts(hosts: str, default_port: int, most: int, what: str) -> list[tuple[str, int]] | str:
    """`HOST[:PORT],[IPv6][:PORT],…` as (host, port) pairs, or what is wrong (`what`: "sentinel", "node")."""
    found: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, port_text = item, str(default_port)
        if item.startswith("["):
            host, _, tail = item.partition("]")
            host += "]"
            if tail:
                if not tail.startswith(":"):
                    return f"each {what} is HOST[:PORT] or [IPv6][:PORT], separated by commas"
                port_text = tail[1:]
        elif ":" in item:
            host, _, port_text = item.partition(":")
        if not _HOST.fullmatch(host) or not (port_text.isdigit() and port_text.isascii()) \
                or not 0 < int(port_text[:6]) < 65536:
            return f"each {what} is HOST[:PORT] or [IPv6][:PORT] (port 1-65535), separated by commas"
        found.append((host.strip("[]"), int(port_text)))
        if len(found) > most:
            return f"more than {most} {what}s"
    return found


def split_url(url: str, schemes: tuple[str, ...]) -> tuple[str, str, str, str, str, str] | str:
    """A multi-host URL's scheme, user info, host list, "/" if a path follows, the path and the
    query; or what is wrong with it (never quoting the password)."""
    scheme, sep, rest = url.partition("://")
    if scheme not in schemes or not sep:
        return f"not a {schemes[0]}:// URL"
    rest, _, query_text = rest.partition("?")
    authority, slash, path = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if not at:
        userinfo, hosts = "", authority
    if "@" in userinfo or "@" in path or "#" in url:
        return "the user or password holds a character that must be percent-encoded (@ as %40, / as %2F, # as %23)"
    return scheme, userinfo, hosts, slash, path, query_text


def parse_sentinel_url(url: str, known_keys: frozenset[str]) -> SentinelURL | str:
    """The URL's parts, or what is wrong with it (never quoting the password: the caller quotes
    the URL redacted). `known_keys`: the query options a redis:// URL takes."""
    split = split_url(url, SENTINEL_SCHEMES)
    if isinstance(split, str):
        return split
    scheme, userinfo, hosts, slash, path, query_text = split
    sentinels = parse_hosts(hosts, SENTINEL_PORT, MAX_SENTINELS, "sentinel")
    if isinstance(sentinels, str):
        return sentinels
    parts = path.split("/") if slash else []
    if not parts or not _NAME.fullmatch(parts[0]):
        return "names no master (redis+sentinel://HOST:PORT,…/MASTER_NAME[/DB]; letters, digits, . _ -)"
    if len(parts) > 2 or (len(parts) == 2 and not (parts[1].isdigit() and parts[1].isascii() and len(parts[1]) < 6)):
        return "after the master's name only a database number may follow (/MASTER_NAME/DB)"
    try:
        query = parse_qsl(query_text, keep_blank_values=True, strict_parsing=bool(query_text))
    except ValueError:
        return "the query is not name=value pairs"
    options: dict[str, str] = {}
    for name, value in query:
        if name not in known_keys and name not in SENTINEL_QUERY_KEYS:
            return "unknown option (sentinel_password, sentinel_username, ssl_ca_certs, …)"
        if name == "db":
            return "give the database in the path (/MASTER_NAME/DB), not as ?db="
        options[name] = value
    user, colon, password = userinfo.partition(":")
    return SentinelURL(
        tls=scheme == "rediss+sentinel", sentinels=tuple(sentinels), service=parts[0],
        db=int(parts[1]) if len(parts) == 2 else 0,
        username=unquote(user) or None, password=unquote(password) if colon else None,
        sentinel_username=options.pop("sentinel_username", None), sentinel_password=options.pop("sentinel_password", None),
        query=tuple(options.items()))


def add_passwords(url: str, password: str = "", sentinel_password: str = "") -> str:
    """The store URL with passwords read from files ([store] password_file, sentinel_password_file)
    put in, percent-encoded. ValueError if the URL gives that password already, or (for a
    sentinel password) is not a Sentinel URL."""
    scheme, _, rest = url.partition("://")
    if password:
        end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        userinfo, at, hosts = rest[:end].rpartition("@")
        if (at and ":" in userinfo) or "password=" in rest[end:].replace("sentinel_password=", ""):
            raise ValueError("the URL gives a password already: give it in the URL or in password_file, not both")
        rest = f"{userinfo if at else ''}:{quote(password, safe='')}@{hosts if at else rest[:end]}{rest[end:]}"
    if sentinel_password:
        if scheme not in SENTINEL_SCHEMES:
            raise ValueError("sentinel_password_file is for a redis+sentinel:// URL")
        if "sentinel_password=" in rest:
            raise ValueError("the URL gives sentinel_password already: give it there or in the file, not both")
        rest += ("&" if "?" in rest else "?") + "sentinel_password=" + quote(sentinel_password, safe="")
    return f"{scheme}://{rest}"
