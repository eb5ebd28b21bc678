"""The per-account views through a real, private Postfix, on both stores: mail sent by SMTP AUTH
and by local sendmail, some of it over a token bucket or a sliding window, then `mailflow top`,
`ratelimit status` and `near-limit` show what happened (the milter's counts reach the store
within its 10 s flush)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import postfix
from tests.helpers.postfix import PrivatePostfix, empty_store_url, running_rig, wait_for
from tests.helpers.servers import MilterProcess

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(not postfix.available(), reason="needs root and Debian's postfix (make test installs it)"),
]

REPO = Path(__file__).resolve().parents[2]
SASL_USERS = {"bob@shop.example": "secret", "ann@news.example": "secret"}
MESSAGE = "From: {sender}\nTo: undisclosed-recipients:;\nSubject: views\n\nhello\n"


def views_config(store: str) -> dict[str, Any]:
    return {
        "store": {"url": store},
        "accounts": {"identify": ["sasl", "local"]},
        "ratelimit": {"limits": ["3/hour"], "accounts": {"news.example": {"limits": ["2/hour sliding"]}}},
    }


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivatePostfix, MilterProcess]]:
    workdir = tmp_path_factory.mktemp(f"views-{request.param}")
    store = empty_store_url(request.param, workdir, request)
    with running_rig(workdir, views_config(store), SASL_USERS) as started:
        yield started


def mailflow(milter: MilterProcess, *args: str) -> Any:
    result = subprocess.run([sys.executable, "-m", "mailflow", *args, "-c", str(milter.config_path), "--json"],
                            capture_output=True, text=True, timeout=60, cwd=REPO, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def send(mta: PrivatePostfix, login: str, recipients: list[str]) -> dict[str, tuple[int, bytes]]:
    with mta.smtp() as smtp:
        smtp.login(login, "secret")
        refused: dict[str, tuple[int, bytes]] = smtp.sendmail(login, recipients, MESSAGE.format(sender=login))
    return refused


def test_top_status_and_near_limit_show_what_the_milter_did(rig: tuple[PrivatePostfix, MilterProcess]) -> None:
    mta, milter = rig
    started = time.monotonic()
    refused = send(mta, "bob@shop.example", [f"s{i}@dest.example" for i in range(4)])  # 3/hour: the 4th waits
    assert list(refused) == ["s3@dest.example"] and refused["s3@dest.example"][0] == 451
    refused = send(mta, "ann@news.example", [f"n{i}@dest.example" for i in range(3)])  # 2/hour sliding
    code, reply = refused["n2@dest.example"]
    assert code == 451 and reply.decode().startswith("4.7.1 Rate limit 2/hour sliding for news.example reached")
    wait = int(reply.decode().split("try again in ")[1].split()[0])
    assert 3600 - 60 < wait <= 3660  # until the minute it was sent in leaves the window
    assert mta.sendmail("wp@blog.example", ["l0@dest.example"], MESSAGE.format(sender="wp@blog.example")).returncode == 0
    wait_for(lambda: len(mta.delivered()) >= 3)

    def counted() -> bool:
        rows = {row["account"]: row for row in mailflow(milter, "top")["accounts"]}
        return all(rows.get(account, {}).get("messages") == 1 for account in ("shop.example", "news.example", "blog.example"))

    wait_for(counted, timeout=30)  # the milter's counts are flushed within 10 s
    assert time.monotonic() - started < 30
    rows = {row["account"]: row for row in mailflow(milter, "top", "--day", "-n", "5")["accounts"]}
    shop, news, blog = rows["shop.example"], rows["news.example"], rows["blog.example"]
    assert (shop["messages"], shop["recipients"], shop["refused_by_reason"], shop["source"]) == (1, 3, {"ratelimit": 1}, "sasl")
    assert shop["limit"] == "3/hour" and shop["limit_share"] > 0.9
    assert (news["recipients"], news["limit"], news["limit_share"]) == (2, "2/hour sliding", 1.0)
    assert (blog["recipients"], blog["source"], blog["refused"]) == (1, "local", 0)

    status = mailflow(milter, "ratelimit", "status", "shop.example")
    assert status["seen"] and status["this_hour"]["messages"] == 1 and status["last_24_hours"]["recipients"] == 3
    [bucket] = status["limits"]
    assert bucket["kind"] == "token_bucket" and bucket["left"] < 0.1
    assert 0 < status["next_fits_in_seconds"] <= 1200  # one recipient's refill at 3/hour
    [window] = mailflow(milter, "ratelimit", "status", "news.example")["limits"]
    assert window["kind"] == "sliding_window" and window["in_use"] == 2 and 3500 < window["next_fits_in_seconds"] <= 3660
    assert not mailflow(milter, "ratelimit", "status", "never.example")["seen"]

    near = mailflow(milter, "near-limit", "--over", "90")
    assert {(row["account"], row["limit"]) for row in near["limits"]} == {("shop.example", "3/hour"),
                                                                           ("news.example", "2/hour sliding")}
    assert near["accounts_looked_at"] == 3
