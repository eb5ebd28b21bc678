"""Cluster store URLs (the `limits` library's spelling), checked before anything connects.

    redis+cluster://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]…][/0][?OPTIONS]
    rediss+cluster://…   TLS to every node, with rediss://'s ssl_* options

The nodes are where the client first learns the slot map; any reachable master will do, the rest
are found from it. A port is 6379 unless given. Redis Cluster has database 0 only: another number
is refused, as is `redis://…?cluster=true` (redis-py would read it as a cluster client that
mailflow's calls do not speak). Parsing is linear in the URL and never guesses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

from mailflow.urls_sentinel import parse_hosts, split_url

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
CLUSTER_PORT = 6379
MAX_NODES = 64
QUERY_CLUSTER = "cluster=true is not how mailflow talks to a Redis Cluster: use redis+cluster://HOST:PORT,HOST:PORT,…"


@dataclass(frozen=True)
class ClusterURL:
    tls: bool
    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    query: tuple[tuple[str, str], ...] = ()  # the other options, as redis:// takes them


def parse_cluster_url(url: str, known_keys: frozenset[str]) -> ClusterURL | str:
    """The URL's parts, or what is wrong with it (never quoting the password: the caller quotes
    the URL redacted). `known_keys`: the query options a redis:// URL takes."""
    split = split_url(url, CLUSTER_SCHEMES)
    if isinstance(split, str):
        return split
    scheme, userinfo, hosts, slash, path, query_text = split
    nodes = parse_hosts(hosts, CLUSTER_PORT, MAX_NODES, "node")
    if isinstance(nodes, str):
        return nodes
    if slash and path not in ("", "0"):
        return "Redis Cluster has database 0 only: end the URL with the nodes or /0"
    try:
        query = parse_qsl(query_text, keep_blank_values=True, strict_parsing=bool(query_text))
    except ValueError:
        return "the query is not name=value pairs"
    options: dict[str, str] = {}
    for name, value in query:
        if name.lower() == "cluster":
            return "the scheme says Cluster already: drop ?cluster="
        if name not in known_keys:
            return "unknown option (username, password, ssl_ca_certs, …)"
        if name == "db" and value != "0":
            return "Redis Cluster has database 0 only (db=0)"
        options[name] = value
    options.pop("db", None)
    user, colon, secret = userinfo.partition(":")
    password = unquote(secret) if colon else options.pop("password", "") or None
    return ClusterURL(tls=scheme == "rediss+cluster", nodes=tuple(nodes),
                      username=unquote(user) or options.pop("username", "") or None, password=password,
                      query=tuple(options.items()))


def cluster_problem(url: str, known_keys: frozenset[str]) -> str | None:
    """Why a Cluster URL (or `redis://…?cluster=…`, which redis-py would read as one) is refused."""
    scheme, _, rest = url.partition("://")
    if scheme in CLUSTER_SCHEMES:
        parsed = parse_cluster_url(url, known_keys)
        return parsed if isinstance(parsed, str) else None  # served by store/redis_cluster
    if any(name.lower() == "cluster" for name, _ in parse_qsl(rest.partition("?")[2], keep_blank_values=True)):
        return QUERY_CLUSTER
    return None
