"""`conforms`: a runtime-checkable protocol's verdict, remembered for the classes that pass."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from gateway.runtime import protocols
from gateway.runtime.protocols import conforms


@runtime_checkable
class Closer(Protocol):
    def close(self) -> None: ...


class Door:
    def close(self) -> None:
        pass


class Wall:
    pass


def test_a_class_that_passes_is_remembered_one_that_fails_is_asked_again() -> None:
    assert conforms(Door(), Closer)
    assert (Door, Closer) in protocols._CONFORMING
    assert not conforms(Wall(), Closer)
    assert (Wall, Closer) not in protocols._CONFORMING
    assert not conforms(None, Closer)
    assert conforms(Door(), Closer)
