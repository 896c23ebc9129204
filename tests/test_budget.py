import pytest

from nas.budget import format_count, parse_budget
from core.errors import UsageError


@pytest.mark.parametrize("text,count", [("3.1M", 3_100_000), ("3100000", 3_100_000), ("3.1e6", 3_100_000),
                                        ("750K", 750_000), ("750k", 750_000), ("0.5m", 500_000), (" 2M ", 2_000_000)])
def test_budgets_parse(text, count):
    assert parse_budget(text) == count


@pytest.mark.parametrize("text", ["3.1X", "-1M", "0", "abc", "", "1e400", "M"])
def test_bad_budgets_name_the_value(text):
    with pytest.raises(UsageError) as error:
        parse_budget(text)
    assert repr(text) in str(error.value) and "expected" in str(error.value)
    assert "\n" not in str(error.value)


def test_format_count():
    assert format_count(3_053_224) == "3.05M"
    assert format_count(750_000) == "750K"
    assert format_count(12) == "12"
