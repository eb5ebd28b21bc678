"""The forgery rules against a table of header sets (cases.yaml), with no MTA in the way."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailflow.forgery.lookalike import LookalikeIndex
from mailflow.forgery.ownership import DomainDirectory
from mailflow.forgery.rules import Checker, MessageFacts

CASES = yaml.safe_load((Path(__file__).parent / "cases.yaml").read_text(encoding="utf-8"))["cases"]
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)

DIRECTORY = DomainDirectory({
    "shop.example": ["shop.example", "shop-news.example"],
    "bank.example": ["bank.example"],
    "xn--bcher-kva.example": ["xn--bcher-kva.example"],
})
LOOKALIKES = LookalikeIndex([("paypal.com", None), ("microsoft.com", None),
                             *DIRECTORY.hosted_organisational_domains()])
CHECKER = Checker(DIRECTORY, LOOKALIKES, relaying=frozenset({"shop.example"}))  # shop.example runs lists


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 60
    assert len({case["name"] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_case(case: dict[str, Any]) -> None:
    facts = MessageFacts(
        account=case.get("account", "shop.example"),
        source=case.get("source", "sasl"),
        sender=case.get("sender", "bob@shop.example"),
        headers=[(name, value) for name, value in case["headers"]],
        now=NOW,
    )
    signals = sorted(finding.signal for finding in CHECKER.headers(facts))
    assert signals == sorted(case["expect"]), [f.text for f in CHECKER.headers(facts)]
