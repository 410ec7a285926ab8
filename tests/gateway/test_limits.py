"""The caps of a node, on their own: what counts as one client, slots, the login throttle."""

from __future__ import annotations

import pytest

from gateway.runtime import limits
from gateway.runtime.limits import Exemptions, LoginThrottle, SlotCounter, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::9", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("unix-socket", "unix-socket"),
    ],
)
def test_a_client_is_its_ipv4_address_or_its_ipv6_64(address: str, key: str) -> None:
    assert client_key(address) == key


def test_exempt_networks() -> None:
    exempt = Exemptions(["10.20.0.0/16", "2001:db8::/32"])
    assert "10.20.3.4" in exempt
    assert "::ffff:10.20.3.4" in exempt
    assert "2001:db8:ffff::1" in exempt
    assert "10.21.0.1" not in exempt
    assert "not an address" not in exempt
    assert "127.0.0.1" not in Exemptions()


def test_slots_are_held_and_given_back() -> None:
    slots = SlotCounter(2)
    assert slots.acquire("a")
    assert slots.acquire("a")
    assert not slots.acquire("a")
    assert slots.acquire("b")
    assert slots.acquire("a", exempt=True)
    assert slots.held("a") == 3
    for _ in range(3):
        slots.release("a")
    assert slots.held("a") == 0
    assert slots.holders == 1  # nothing kept for a key holding nothing
    assert slots.acquire("a")


def test_failed_logins_throttle_a_key_until_the_oldest_leaves_the_window() -> None:
    clock = Clock()
    throttle = LoginThrottle(3, 60.0, clock=clock)
    for _ in range(2):
        throttle.failed("192.0.2.7")
        clock.now += 10
    assert throttle.retry_after("192.0.2.7") is None
    throttle.failed("192.0.2.7")  # failures at 1000, 1010, 1020
    assert throttle.retry_after("192.0.2.7") == pytest.approx(40.0)
    assert throttle.retry_after("192.0.2.8") is None
    clock.now = 1060.5  # the first failure has left the window
    assert throttle.retry_after("192.0.2.7") is None
    throttle.failed("192.0.2.7")
    assert throttle.retry_after("192.0.2.7") == pytest.approx(9.5)


def test_an_ipv6_client_cannot_escape_by_changing_its_interface_id() -> None:
    throttle = LoginThrottle(2, 60.0, clock=Clock())
    throttle.failed(client_key("2001:db8:1:2::1"))
    throttle.failed(client_key("2001:db8:1:2::2"))
    assert throttle.retry_after(client_key("2001:db8:1:2::3")) is not None
    assert throttle.retry_after(client_key("2001:db8:1:3::1")) is None
    assert throttle.retry_after(client_key("::ffff:192.0.2.7")) is None


def test_the_throttle_remembers_a_bounded_number_of_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(limits, "MAX_TRACKED", 100)
    throttle = LoginThrottle(1, 60.0, clock=Clock())
    for n in range(250):
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
    assert throttle.tracked == 100
    assert throttle.retry_after("10.0.0.249") is not None  # the newest are kept
    assert throttle.retry_after("10.0.0.0") is None
