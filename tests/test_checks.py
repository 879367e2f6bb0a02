import math

import pytest

from selfsup import checks


def test_integer_accepts_and_returns_the_value():
    assert checks.integer("a.b", 3, minimum=1) == 3
    assert checks.integer("a.b", None, minimum=1, allow_none=True) is None
    assert checks.integer("a.b", -1, minimum=-1, maximum=0) == -1


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        (0, {"minimum": 1}, "a.b=0: expected a positive integer"),
        (True, {"minimum": 0}, "a.b=True: expected an integer >= 0"),
        (2.0, {}, "a.b=2.0: expected an integer"),
        (None, {"minimum": 2}, "a.b=None: expected an integer >= 2"),
        (9, {"minimum": 1, "maximum": 8}, "a.b=9: expected an integer in [1, 8]"),
        ("3", {"minimum": 1, "allow_none": True}, "a.b='3': expected a positive integer or null"),
    ],
)
def test_integer_refuses_in_one_line_naming_the_key(value, kwargs, message):
    with pytest.raises(ValueError) as e:
        checks.integer("a.b", value, **kwargs)
    assert str(e.value) == message


def test_number():
    assert checks.number("t", 0.5, above=0) == 0.5
    assert checks.number("t", 1, minimum=0, maximum=1) == 1
    for bad in (0, -1.0, math.nan, math.inf, False, "0.1"):
        with pytest.raises(ValueError, match=r"^t=.*: expected a number > 0$"):
            checks.number("t", bad, above=0)
    with pytest.raises(ValueError, match=r"^t=1.5: expected a number in \[0, 1\]$"):
        checks.number("t", 1.5, minimum=0, maximum=1)


def test_one_of():
    assert checks.one_of("o.negatives", "all", ("all", "cross")) == "all"
    with pytest.raises(ValueError, match=r"^o.negatives='some': expected one of 'all', 'cross'$"):
        checks.one_of("o.negatives", "some", ("all", "cross"))


def test_number_below_is_exclusive():
    assert checks.number("s", 0, minimum=0, below=1) == 0
    for bad in (1, 1.0, -0.1):
        with pytest.raises(ValueError, match=r"^s=.*: expected a number in \[0, 1\)$"):
            checks.number("s", bad, minimum=0, below=1)
    with pytest.raises(ValueError, match=r"^s=2: expected a number in \(0, 1\)$"):
        checks.number("s", 2, above=0, below=1)
