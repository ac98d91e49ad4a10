"""MailboxID, the text and binary address forms, and incarnations."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import reign
from reign._core.ids import new_incarnation, parse_mailbox_id

ids = st.builds(
    reign.MailboxID,
    st.integers(0, 255),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
)


@given(ids)
def test_text_and_binary_forms_round_trip(mid: reign.MailboxID) -> None:
    assert parse_mailbox_id(str(mid)) == mid
    assert parse_mailbox_id(bytes(mid)) == mid
    assert str(mid) == f"<{mid.node}.{mid.incarnation}.{mid.serial}>"


def test_binary_form_is_compact() -> None:
    assert len(bytes(reign.MailboxID(1, 2, 3))) == 18


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<1.2>",
        "<1.2.3.4>",
        "1.2.3",
        "<1.2.3",
        "< 1.2.3>",
        "<1.2.3> ",
        "<01.2.3>",
        "<1.02.3>",
        "<-1.2.3>",
        "<+1.2.3>",
        "<256.1.1>",
        f"<1.{2**64}.1>",
        f"<1.1.{2**64}>",
        "<1.a.3>",
        "<١.2.3>",  # Arabic-Indic digit: only ASCII decimal is accepted
        "<1.2.3>\n",
    ],
)
def test_bad_text_is_rejected(text: str) -> None:
    with pytest.raises(reign.IllegalAddressFormatError):
        parse_mailbox_id(text)


@pytest.mark.parametrize(
    "data",
    [b"", b"R" + bytes(16), b"R" + bytes(18), b"X" + bytes(17), b"r" + bytes(17)],
)
def test_bad_binary_is_rejected(data: bytes) -> None:
    with pytest.raises(reign.IllegalAddressFormatError):
        parse_mailbox_id(data)


def test_other_types_are_rejected() -> None:
    with pytest.raises(reign.IllegalAddressFormatError):
        parse_mailbox_id(12)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [(-1, 0, 0), (256, 0, 0), (0, 2**64, 0), (0, 0, -1), (True, 0, 0), (1.0, 0, 0)])
def test_mailbox_id_validates(bad: tuple[object, object, object]) -> None:
    with pytest.raises(ValueError):
        reign.MailboxID(*bad)  # type: ignore[arg-type]


def test_mailbox_id_is_frozen_and_hashable() -> None:
    mid = reign.MailboxID(1, 2, 3)
    assert {mid: 1}[reign.MailboxID(1, 2, 3)] == 1
    with pytest.raises(AttributeError):
        mid.node = 2  # type: ignore[misc]


def test_incarnations_differ_between_nodes_of_the_same_id() -> None:
    incarnations = {reign.Node(7).incarnation for _ in range(1000)}
    assert len(incarnations) == 1000
    assert all(0 < i < 2**64 for i in incarnations)


def test_incarnation_grows_with_time() -> None:
    import time

    first = new_incarnation()
    time.sleep(0.002)
    assert new_incarnation() > first
