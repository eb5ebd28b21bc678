"""The pymilter adapter without an MTA (pymilter's TestCtx): faults become on_error replies."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import Milter
import pytest
from Milter import testctx

from mailflow.config import parse_config
from mailflow.engine import Engine
from mailflow.milter.adapter import MailflowMilter
from mailflow.ratelimit.bucket import DebitResult
from mailflow.ratelimit.limits import Limit
from mailflow.store.sqlite import SqliteStore


class BrokenStore(SqliteStore):
    """A store with a bug in it (not an outage): the adapter's guard must still answer."""

    def levels(self, account: str, limits: Sequence[Limit], estimate: bool = False) -> tuple[float, ...]:
        raise RuntimeError("bug")

    def debit(self, account: str, limits: Sequence[Limit], cost: float) -> DebitResult:
        raise ZeroDivisionError("bug")


@pytest.fixture
def ctx(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> testctx.TestCtx:
    # TestCtx takes a negotiated no-reply (NOREPLY) for a refusal; offer no no-reply steps.
    no_noreply = testctx.TestCtx.default_opts[1] & ~(Milter.P_NR_CONN | Milter.P_NR_HDR)
    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, no_noreply, 0, 0])
    on_error = getattr(request, "param", "tempfail")
    config = parse_config({"milter": {"on_error": on_error}})
    MailflowMilter.engine = Engine(config, BrokenStore(str(tmp_path / "s.db")))
    Milter.factory = MailflowMilter
    ctx = testctx.TestCtx()
    ctx._setsymval("{auth_authen}", "bob@shop.example")
    assert ctx._connect(ip="198.51.100.1") == Milter.CONTINUE
    return ctx


def test_a_fault_in_rcpt_gets_the_on_error_tempfail(ctx: testctx.TestCtx) -> None:
    assert ctx._envfrom("<bob@shop.example>") == Milter.CONTINUE
    assert ctx._envrcpt("<a@x.example>") == Milter.TEMPFAIL
    assert ctx._reply[:2] == ("451", "4.3.0")


@pytest.mark.parametrize("ctx", ["accept"], indirect=True)
def test_with_on_error_accept_mail_goes_on(ctx: testctx.TestCtx) -> None:
    assert ctx._envfrom("<bob@shop.example>") == Milter.CONTINUE
    assert ctx._envrcpt("<a@x.example>") == Milter.CONTINUE


def test_percent_signs_in_replies_are_escaped(tmp_path: Path) -> None:
    from mailflow.model import Decision, Reply, Verdict

    milter = MailflowMilter()
    ctx = testctx.TestCtx()
    milter._setctx(ctx)
    assert milter.apply(Decision(Verdict.TEMPFAIL, "x", Reply("451", "4.7.1", "100% full"))) == Milter.TEMPFAIL
    assert ctx._reply == ("451", "4.7.1", "100%% full")
