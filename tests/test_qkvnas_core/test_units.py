"""Counts and durations as people write and read them."""
import pytest

from qkvnas_core.errors import UsageError
from qkvnas_core.units import format_count, format_duration, parse_count


@pytest.mark.parametrize("text,count", [("3.1M", 3_100_000), ("3100000", 3_100_000), ("3.1e6", 3_100_000),
                                        ("750K", 750_000), ("750k", 750_000), ("0.5m", 500_000), (" 2M ", 2_000_000)])
def test_budgets_parse(text, count):
    assert parse_count(text) == count


@pytest.mark.parametrize("text", ["3.1X", "-1M", "0", "abc", "", "1e400", "M"])
def test_bad_budgets_name_the_value(text):
    with pytest.raises(UsageError) as error:
        parse_count(text)
    assert repr(text) in str(error.value) and "expected" in str(error.value)
    assert "\n" not in str(error.value)


def test_format_count():
    assert format_count(3_053_224) == "3.05M"
    assert format_count(750_000) == "750K"
    assert format_count(12) == "12"


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (9.4, "9s"), (59.6, "1m00s"), (67, "1m07s"), (3600, "1h00m"),
                                          (7384, "2h03m")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
