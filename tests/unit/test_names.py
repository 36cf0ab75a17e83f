"""Names that reach the wire are validated before they touch a broker."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus import Bus, BusError, InvalidName
from managers.names import validate_app_name, validate_channel


@pytest.mark.parametrize("name", ["crm", "a", "app-1", "my_app", "0x"])
def test_valid_app_names(name: str) -> None:
    assert validate_app_name(name) == name


@pytest.mark.parametrize("name", ["", "CRM", "-app", "_app", "a.b", "a b", "a:b", "x" * 65, 3])
def test_invalid_app_names_fail_at_construction_showing_the_value(name: object) -> None:
    with pytest.raises(InvalidName) as info:
        Bus(name)  # type: ignore[arg-type]
    assert repr(name) in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, BusError)


@given(st.from_regex(r"[A-Za-z0-9._-]{1,200}", fullmatch=True))
def test_channel_names_of_the_allowed_alphabet_pass(channel: str) -> None:
    assert validate_channel(channel) == channel


@given(st.text(min_size=1).filter(lambda s: any(c in s for c in ":@ /#*\n")))
def test_channel_names_with_broker_hostile_characters_fail(channel: str) -> None:
    with pytest.raises(InvalidName, match="invalid channel name"):
        validate_channel(channel)
