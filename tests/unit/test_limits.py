import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailflow.ratelimit.limits import Limit, LimitSyntaxError, parse_limit


@pytest.mark.parametrize(
    "text, count, period, rate",
    [
        ("600/hour", 600, "hour", 600 / 3600),
        ("5000/day", 5000, "day", 5000 / 86400),
        ("10/second", 10, "second", 10.0),
        ("30 / minute", 30, "minute", 0.5),
        ("100/hours", 100, "hour", 100 / 3600),
        ("7/HOUR", 7, "hour", 7 / 3600),
    ],
)
def test_parse_limit(text: str, count: int, period: str, rate: float) -> None:
    limit = parse_limit(text)
    assert (limit.count, limit.period, limit.capacity) == (count, period, count)
    assert limit.rate == pytest.approx(rate)


def test_burst_sets_capacity_not_rate() -> None:
    limit = parse_limit("600/hour", burst=50)
    assert limit.capacity == 50 and limit.rate == pytest.approx(600 / 3600)
    assert str(limit) == "600/hour (burst 50)"


@pytest.mark.parametrize("text", ["", "600", "600/fortnight", "0/hour", "-1/hour", "x/hour", "600/", "/hour", "1.5/hour"])
def test_bad_limits_are_refused(text: str) -> None:
    with pytest.raises(LimitSyntaxError):
        parse_limit(text)


@given(st.text(max_size=30))
def test_parser_never_raises_anything_else(text: str) -> None:
    try:
        assert isinstance(parse_limit(text), Limit)
    except LimitSyntaxError:
        pass


@given(st.integers(1, 10**9), st.sampled_from(["second", "minute", "hour", "day"]))
def test_round_trip(count: int, period: str) -> None:
    assert parse_limit(str(parse_limit(f"{count}/{period}"))) == Limit(count, period, count)
