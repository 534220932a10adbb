"""``record`` classes behave as frozen, slotted dataclasses (what the wire layer had)."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import ClassVar

import pytest

from dqlitepy.wire.record import field, fields, is_record, record


@record
class Point:
    """Two fields, one with a default, and a class attribute that is no field."""

    KIND: ClassVar[str] = "point"
    x: int
    y: int = 0


@record
class Point3(Point):
    """Inherits x and y, adds z with a default built per instance."""

    z: list[int] = field(default_factory=list)


@record
class Checked:
    """Runs __post_init__ after __init__."""

    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("negative")


def test_constructor_defaults_and_fields() -> None:
    assert (Point(1).x, Point(1).y, Point(1, 2).y, Point(x=3, y=4).y) == (1, 0, 2, 4)
    assert fields(Point) == ("x", "y") and fields(Point3(1)) == ("x", "y", "z")
    assert Point.KIND == "point" and Point3.KIND == "point"
    assert Point3(1).z == [] and Point3(1).z is not Point3(1).z
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, 2, 3)  # type: ignore[call-arg]


def test_frozen_slotted_and_value_semantics() -> None:
    p = Point(1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del p.x  # type: ignore[misc]
    assert not hasattr(p, "__dict__")
    assert p == Point(1, 2) and p != Point(1, 3) and hash(p) == hash(Point(1, 2))
    assert Point3(1, 2) != Point(1, 2)  # another class is never equal
    assert repr(Point3(1, 2, [3])) == "Point3(x=1, y=2, z=[3])"
    assert pickle.loads(pickle.dumps(Point3(1, 2, [3]))) == Point3(1, 2, [3])
    assert copy.copy(p) == p and is_record(p) and not is_record(Point)


def test_post_init_runs() -> None:
    assert Checked(1).n == 1
    with pytest.raises(ValueError, match="negative"):
        Checked(-1)


def test_refuses_what_it_cannot_rebuild() -> None:
    with pytest.raises(TypeError, match="non-default field"):

        @record
        class Bad:
            a: int = 0
            b: int

    with pytest.raises(TypeError, match="super"):

        @record
        class Sup(Point):
            def total(self) -> int:
                return super().__hash__()


def test_fields_may_be_named_like_builtins() -> None:
    @record
    class Shadow:
        type: int
        self: int = 1

    assert (Shadow(2).type, Shadow(2).self) == (2, 1)
