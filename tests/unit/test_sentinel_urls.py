"""Sentinel store URLs (the `limits` library's spelling) read as written, refused with the reason
by config loading and check-config (exit 2, one line), passwords never shown. Cluster URLs: test_cluster_urls."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailflow.store.redis_sentinel import sentinel_spec
from mailflow.urls import redact_url, store_url_problem
from mailflow.urls_sentinel import SENTINEL_PORT, SentinelURL
from tests.unit.test_cli_errors import _config, assert_one_line_exit_2, mailflow_subprocess

SECRET = "S3cr%2Fet"  # percent-encoded "/"


def spec(url: str) -> SentinelURL:
    parsed = sentinel_spec(url)
    assert parsed is not None
    return parsed


def test_a_sentinel_url_is_read_as_written() -> None:
    s = spec(f"redis+sentinel://:{SECRET}@127.0.0.1:26379,[::1]:26380,sentinel.example/mymaster/3"
             "?sentinel_password=sp&health_check_interval=5")
    assert s.sentinels == (("127.0.0.1", 26379), ("::1", 26380), ("sentinel.example", SENTINEL_PORT))
    assert (s.service, s.db, s.password, s.sentinel_password, s.tls) == ("mymaster", 3, "S3cr/et", "sp", False)
    assert s.query == (("health_check_interval", "5"),)
    assert s.master_url("10.0.0.7", 6380) == "redis://:S3cr%2Fet@10.0.0.7:6380/3?health_check_interval=5"
    tls = spec("rediss+sentinel://u:p@127.0.0.1:26379/m?ssl_cert_reqs=none")
    assert tls.tls and tls.db == 0 and tls.master_url("::1", 6379) == "rediss://u:p@[::1]:6379/0?ssl_cert_reqs=none"
    assert sentinel_spec("redis://127.0.0.1:6379/0") is None


@pytest.mark.parametrize("url, words", [
    ("redis+sentinel://127.0.0.1:26379", "names no master"),
    ("redis+sentinel://127.0.0.1:26379/", "names no master"),
    ("redis+sentinel://127.0.0.1:26379/m/x", "database number"),
    ("redis+sentinel://127.0.0.1:26379/m/0/1", "database number"),
    ("redis+sentinel://127.0.0.1:0/m", "port 1-65535"),
    ("redis+sentinel://127.0.0.1:26379,/m", "HOST[:PORT]"),
    ("redis+sentinel://127.0.0.1:26379/m?nope=1", "unknown option"),
    ("redis+sentinel://127.0.0.1:26379/m?db=2", "in the path"),
    ("redis+sentinel://" + ",".join(["127.0.0.1:1"] * 17) + "/m", "more than 16"),
    ("redis+sentinel://:p@ss@127.0.0.1:26379/m", "percent-encoded"),
])
def test_a_bad_sentinel_url_is_refused_with_the_reason(url: str, words: str) -> None:
    problem = store_url_problem(url)
    assert problem is not None and words in problem, problem
    with pytest.raises(ValueError, match="redis\\+sentinel"):
        sentinel_spec(url)


def test_a_sentinel_url_is_linear_in_its_length() -> None:
    assert store_url_problem("redis+sentinel://" + "a" * 100_000 + ":1/m") is not None
    assert store_url_problem("redis+sentinel://127.0.0.1:1/m?" + "x=1&" * 20_000) is not None


def test_sentinel_passwords_never_show() -> None:
    url = "redis+sentinel://:MasterPw42@127.0.0.1:26379/m?sentinel_password=SentinelPw42"
    assert store_url_problem(url) is None
    shown = redact_url(url)
    assert "MasterPw42" not in shown and "SentinelPw42" not in shown and "***" in shown


def test_check_config_accepts_a_sentinel_url_without_showing_passwords(tmp_path: Path) -> None:
    url = "redis+sentinel://:MasterPw42@127.0.0.1:26379,127.0.0.1:26380/m/0?sentinel_password=SentinelPw42"
    result = mailflow_subprocess("check-config", "-c", str(_config(tmp_path, url)))
    assert result.returncode == 0, result.stderr
    assert "MasterPw42" not in result.stdout + result.stderr and "SentinelPw42" not in result.stdout + result.stderr


def test_rediscovery_is_rate_limited_and_off_the_callers_thread() -> None:
    """However many calls fail, the sentinels are asked at most once per REDISCOVER_EVERY, never
    on the failing caller's thread."""
    import threading
    import time

    from mailflow.store.base import StoreError
    from mailflow.store.redis_sentinel import REDISCOVER_EVERY, MasterFollower
    from tests.helpers.servers import free_port

    threads: list[str] = []

    class Counting(MasterFollower):
        def discover(self) -> tuple[str, int]:
            threads.append(threading.current_thread().name)
            raise StoreError("redis: no master: (test)")

    follower = Counting(spec(f"redis+sentinel://127.0.0.1:{free_port()}/m"), 200, lambda h, p: None, lambda h, p: None)
    began = time.monotonic()
    while time.monotonic() - began < 3 * REDISCOVER_EVERY:
        follower.suspect()
        time.sleep(0.001)
    time.sleep(0.1)
    assert 2 <= len(threads) <= 4, threads
    assert threading.current_thread().name not in threads
    follower.close()


def test_passwords_from_files_go_into_the_url_and_never_show(tmp_path: Path) -> None:
    import os

    from mailflow.urls_sentinel import add_passwords

    master, sentinel = tmp_path / "redis.pw", tmp_path / "sentinel.pw"
    for path, secret in ((master, "Mast/er#Pw42\n"), (sentinel, "Sent&inel Pw42")):
        path.write_text(secret)
        os.chmod(path, 0o600)
    url = "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/m/0"
    extra = f'password_file = "{master}"\nsentinel_password_file = "{sentinel}"\n'
    cfg = _config(tmp_path, url)
    cfg.write_text(cfg.read_text().replace('[suppression]', extra + '[suppression]', 1))
    result = mailflow_subprocess("check-config", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "Pw42" not in result.stdout + result.stderr and "***" in result.stdout
    parsed = spec(add_passwords(url, "Mast/er#Pw42", "Sent&inel Pw42"))
    assert (parsed.password, parsed.sentinel_password, parsed.sentinels[1]) == (
        "Mast/er#Pw42", "Sent&inel Pw42", ("127.0.0.1", 26380))
    assert spec(add_passwords("redis+sentinel://u@127.0.0.1/m", "p")).username == "u"
    for given, kwargs in (("redis+sentinel://:x@127.0.0.1/m", {"password": "p"}),
                          ("redis://127.0.0.1:6379/0?password=x", {"password": "p"}),
                          ("redis://127.0.0.1:6379/0", {"sentinel_password": "p"}),
                          ("redis+sentinel://127.0.0.1/m?sentinel_password=x", {"sentinel_password": "p"})):
        with pytest.raises(ValueError):
            add_passwords(given, **kwargs)
    os.chmod(master, 0o644)  # readable by others: refused in one line, exit 2
    result = mailflow_subprocess("check-config", "-c", str(cfg))
    assert_one_line_exit_2(result.returncode, result.stdout, result.stderr, "password_file")
