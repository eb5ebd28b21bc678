"""Store URLs with every nasty password: never shown (not even in part), never read with another
host, and never an exception (a bad URL is exit 2, not 70)."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from redis.connection import parse_url

from mailflow.urls import redact_text, redact_url, store_url_problem

NASTY = ["Tr0ub@dor/Secret42", "Tr0ub@dor#Secret42", "pa?ssSecret42", "Sec/ret42", "Secret42@", "@Secret42",
         "Sec ret42", "Sec'ret42", 'Sec"ret42', "Sec:ret42", "Sec%ret42", "Sec%zzret42", "Sec[ret42", "Sec]ret42",
         "[::1]Secret42", "Sec&zq=xyzzy", "Sec;ret42", "Secret42\\", "Sëcret42", "Sec\uff03ret42", "Sec\tret42",
         ":Secret42", "Sec=ret42", "Sec,ret42", "Sec(ret42)", "Sec<ret42>", "Sec`ret42", "Sec@ret42@x2y",
         "Sec?pw=q9r&db=1", "Sec/../ret42", "Sec\nret42"]
FORMS = ["redis://:{}@127.0.0.1:6379/0", "redis://mailflow:{}@127.0.0.1:6379/0", "rediss://:{}@127.0.0.1:6380/2",
         "redis://127.0.0.1:6379/0?password={}", "redis://127.0.0.1:6379/0?db=1&password={}",
         "unix://:{}@/run/redis/redis.sock?db=0"]


def _pieces(password: str) -> list[str]:
    return [p for p in re.split(r"[^0-9A-Za-zë]+", password) if len(p) >= 3]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("password", NASTY)
def test_no_part_of_a_nasty_password_ever_shows(form: str, password: str) -> None:
    url = form.format(password)
    problem = store_url_problem(url) or ""
    shown = [redact_url(url), problem, redact_text(f"mailflow: cannot reach '{redact_url(url)}': refused")]
    for piece in _pieces(password):
        for text in shown:
            assert piece not in text, (url, text)


@pytest.mark.parametrize("form", [f for f in FORMS if "@" in f])
@pytest.mark.parametrize("password", NASTY)
def test_an_unencoded_password_is_refused_or_read_as_written(form: str, password: str) -> None:
    """Accepted means redis-py reads the same host and this very password; refused means the
    message names the encoding."""
    url = form.format(password)
    problem = store_url_problem(url)
    if problem is None:
        parsed = parse_url(url)
        assert parsed.get("host", "127.0.0.1") == "127.0.0.1" and parsed["password"] == password
    else:
        assert "encode" in problem or "spaces or control" in problem, problem


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("password", NASTY)
def test_the_percent_encoded_password_is_accepted_as_is(form: str, password: str) -> None:
    url = form.format(quote(password, safe=""))
    assert store_url_problem(url) is None, url
    assert parse_url(url)["password"] == password


@pytest.mark.parametrize("url", ["redis://[zz]:6379/0", "redis://:hunter2@[::1]]:16399/0", "redis://[::1]x:1/0", "redis://:hunter2@[::1:6379/0", "redis://:hunter2@::1]:6379/0",
                                 "redis://:p\uff03w@h/0", "redis://h:99999/0", "redis://h:-1/0", "redis://h:0/0"])
def test_a_bad_host_or_port_is_a_problem_not_an_exception(url: str) -> None:
    problem = store_url_problem(url)
    assert problem is not None and "hunter2" not in problem


def test_the_reviewers_urls() -> None:
    url = "redis://:Tr0ub@dor/Secret42@127.0.0.1:6379/0"
    assert redact_url(url) == "redis://:***@127.0.0.1:6379/0"
    assert "@ as %40" in (store_url_problem(url) or "")
    assert "encode" in (store_url_problem("redis://:Tr0ub@dor#Secret42@127.0.0.1:16399/0") or "")
    assert "encode" in (store_url_problem("redis://:pa?ss@127.0.0.1:6379/0") or "")
    assert store_url_problem("redis://127.0.0.1:6379/0#frag") is not None
    assert store_url_problem("redis://[::1]:6379/0") is None
    assert store_url_problem("redis://h:6379/x") == "'redis://h:6379/x': the path must be a database number (redis://HOST:PORT/0)"
    assert "'client'" in (store_url_problem("redis://h:6379/0?client=1") or "")
