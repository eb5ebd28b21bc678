"""Cluster store URLs read as written; what mailflow cannot serve refused with the reason by config
loading and check-config (one line, exit 2), passwords never shown; cluster replies named in logs."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis import exceptions as rx

from mailflow.store.redis_errors import describe
from mailflow.urls import REDIS_QUERY_KEYS, redact_url, store_url_problem
from mailflow.urls_cluster import CLUSTER_PORT, QUERY_CLUSTER, ClusterURL, parse_cluster_url
from mailflow.urls_sentinel import add_passwords
from tests.unit.test_cli_errors import _config, assert_one_line_exit_2, mailflow_subprocess


def parsed(url: str) -> ClusterURL:
    result = parse_cluster_url(url, REDIS_QUERY_KEYS)
    assert isinstance(result, ClusterURL), result
    return result


def test_a_cluster_url_is_read_as_written() -> None:
    c = parsed("redis+cluster://:S3cr%2Fet@127.0.0.1:7000,[::1]:7001,node.example?health_check_interval=5")
    assert c.nodes == (("127.0.0.1", 7000), ("::1", 7001), ("node.example", CLUSTER_PORT))
    assert (c.tls, c.username, c.password, c.query) == (False, None, "S3cr/et", (("health_check_interval", "5"),))
    tls = parsed("rediss+cluster://mf:pw@127.0.0.1:7000/0?ssl_cert_reqs=none&db=0")
    assert (tls.tls, tls.username, tls.password, tls.query) == (True, "mf", "pw", (("ssl_cert_reqs", "none"),))
    assert parsed("redis+cluster://127.0.0.1:7000?password=pw&username=u").password == "pw"
    assert "S3cr" not in repr(c)


@pytest.mark.parametrize("url, words", [
    ("redis+cluster://127.0.0.1:7000/1", "database 0 only"),
    ("redis+cluster://127.0.0.1:7000/0/1", "database 0 only"),
    ("redis+cluster://127.0.0.1:7000?db=2", "database 0 only"),
    ("redis+cluster://127.0.0.1:70000", "port 1-65535"),
    ("redis+cluster://127.0.0.1:7000,,127.0.0.1:7001", "each node is HOST[:PORT]"),
    ("redis+cluster://", "each node is HOST[:PORT]"),
    ("redis+cluster://127.0.0.1:7000?cluster=true", "drop ?cluster="),
    ("redis+cluster://127.0.0.1:7000?socket_keepalive=1", "unknown option"),
    ("redis+cluster://127.0.0.1:7000?db", "not name=value"),
    ("redis+cluster://u:p@ss@127.0.0.1:7000", "percent-encoded"),
    ("redis+cluster://" + ",".join(f"127.0.0.1:{7000 + i}" for i in range(65)), "more than 64 nodes"),
])
def test_a_bad_cluster_url_is_refused_with_the_reason(url: str, words: str) -> None:
    problem = store_url_problem(url)
    assert problem is not None and words in problem, problem


def test_the_password_is_never_shown() -> None:
    url = "redis+cluster://mf:Pw%2F42@127.0.0.1:7000,127.0.0.1:7001/1"
    problem = store_url_problem(url)
    assert problem is not None and "Pw" not in problem and "database 0 only" in problem
    assert redact_url(url) == "redis+cluster://mf:***@127.0.0.1:7000,127.0.0.1:7001/1"
    with_file = add_passwords("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", "p/w@1")
    assert parsed(with_file).password == "p/w@1"
    with pytest.raises(ValueError, match="password already"):
        add_passwords("redis+cluster://:x@127.0.0.1:7000", "y")


@pytest.mark.parametrize("url, words", [
    ("redis://127.0.0.1:6379/0?cluster=true", QUERY_CLUSTER),
    ("redis://127.0.0.1:6379/0?Cluster=1", QUERY_CLUSTER),
    ("redis+cluster://127.0.0.1:7000/3", "database 0 only"),
])
def test_check_config_refuses_what_it_cannot_serve_in_one_line(tmp_path: Path, url: str, words: str) -> None:
    problem = store_url_problem(url)
    assert problem is not None and words in problem
    result = mailflow_subprocess("check-config", "-c", str(_config(tmp_path, url)))
    assert_one_line_exit_2(result.returncode, result.stdout, result.stderr, words[:40])


@pytest.mark.parametrize("url", ["redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
                                 "rediss+cluster://:pw@127.0.0.1:7000/0?ssl_cert_reqs=none"])
def test_check_config_accepts_a_well_formed_cluster_url(tmp_path: Path, url: str) -> None:
    assert store_url_problem(url) is None  # the Cluster store serves it (store/redis_cluster)
    result = mailflow_subprocess("check-config", "-c", str(_config(tmp_path, url)))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("error, shown", [
    (rx.MovedError("3383 127.0.0.1:7001"), "MOVED: slot 3383 is served by 127.0.0.1:7001"),
    (rx.AskError("12 127.0.0.1:7002"), "ASK: slot 12 is served by 127.0.0.1:7002"),
    (rx.ClusterDownError("The cluster is down"), "CLUSTERDOWN The cluster is down"),
    (rx.MasterDownError("Link with MASTER is down"), "MASTERDOWN Link with MASTER is down"),
    (rx.TryAgainError("Multiple keys request during rehashing of slot"), "TRYAGAIN Multiple keys"),
    (rx.ClusterCrossSlotError("Keys in request don't hash to the same slot"), "CROSSSLOT Keys"),
])
def test_cluster_replies_are_logged_with_their_name(error: Exception, shown: str) -> None:
    assert describe(error, 250).startswith(shown)
