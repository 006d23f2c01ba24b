import pytest

from autofit.errors import UsageError
from autofit.units import parse_duration, parse_memory


@pytest.mark.parametrize("text,expected", [("24GiB", 24 * 2**30), ("24GB", 24 * 10**9), ("24", 24 * 2**30),
                                           ("80g", 80 * 10**9), ("512MiB", 512 * 2**20), ("1.5 GiB", int(1.5 * 2**30))])
def test_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["24XB", "", "GiB", "-3GiB", "24 Gigs", "10KiB"])
def test_bad_memory(text):
    with pytest.raises(UsageError):
        parse_memory(text)


@pytest.mark.parametrize("text,expected", [("90s", 90), ("15m", 900), ("1h", 3600), ("45", 45), ("2.5min", 150)])
def test_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["soon", "0", "5d", "-1m"])
def test_bad_duration(text):
    with pytest.raises(UsageError):
        parse_duration(text)
