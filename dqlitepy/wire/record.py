"""Frozen value classes, cheap to define: what ``@dataclass(frozen=True, slots=True)`` gives.

The wire layer has some 45 message and value classes, all frozen and slotted, and a
client imports every one of them.  ``dataclasses`` builds each class by compiling six
or seven generated functions (about 2 ms a class) and pulls in ``inspect``, ``ast``
and ``tokenize``; together that was half of ``import dqlitepy``.  :func:`record`
keeps the same behaviour for the same class body at a fraction of the cost:

- ``__init__`` is generated (one small compile per distinct field list, shared by
  classes with the same fields), since constructors run once per message;
- ``__repr__``, ``__eq__``, ``__hash__``, the frozen ``__setattr__`` and pickling
  are shared generic functions that read the field list;
- fields are the class's own annotations plus its record bases', in order; an
  annotation naming ``ClassVar`` is a class attribute, not a field; a class
  attribute of the same name is the field's default; :func:`field` gives a
  default built per instance; ``__post_init__`` runs after ``__init__`` if defined.

Type checkers see the decorator as a dataclass transform (PEP 681), frozen by
default, so constructors and attribute assignment are checked as for dataclasses.
Assigning to a field raises :class:`dataclasses.FrozenInstanceError` (an
``AttributeError``), as a frozen dataclass does; ``dataclasses`` is imported only then.
"""

from __future__ import annotations

from collections.abc import Callable
from keyword import iskeyword
from typing import TYPE_CHECKING, Any, TypeVar

_C = TypeVar("_C", bound=type)
_F = TypeVar("_F")
_V = TypeVar("_V")

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:

    def dataclass_transform(**kwargs: object) -> Callable[[_F], _F]:
        """At run time the transform is only a hint for type checkers."""
        return lambda f: f


__all__ = ["field", "fields", "is_record", "record"]


class _Factory:
    """The marker :func:`field` leaves as a class attribute: build the default per instance."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], _V]) -> _V:
    """A field whose default is ``default_factory()``, built for each instance."""
    return _Factory(default_factory)  # type: ignore[return-value]  # read by record()


def fields(obj: object) -> tuple[str, ...]:
    """The field names of a record instance or class, in ``__init__`` order."""
    cls = obj if isinstance(obj, type) else type(obj)
    names: tuple[str, ...] = getattr(cls, "__record_fields__")  # noqa: B009 - set by record()
    return names


def is_record(obj: object) -> bool:
    """Whether ``obj`` is an instance of a :func:`record` class (not the class itself)."""
    return not isinstance(obj, type) and hasattr(type(obj), "__record_fields__")


def _is_classvar(annotation: object) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return text.startswith(("ClassVar", "typing.ClassVar"))


#: Compiled ``__init__`` builders by (fields, number of defaults, has __post_init__).
_INIT_CACHE: dict[tuple[tuple[str, ...], int, bool], Callable[..., Any]] = {}


def _init_builder(names: tuple[str, ...], n_defaults: int, post: bool) -> Callable[..., Any]:
    key = (names, n_defaults, post)
    builder = _INIT_CACHE.get(key)
    if builder is None:
        first_default = len(names) - n_defaults
        # The generated names start with "_rec_" so that no field shadows them.
        params = ", ".join(
            name if i < first_default else f"{name}=_rec_d[{i - first_default}]"
            for i, name in enumerate(names)
        )
        body = [f"  _rec_set(_rec_self, {name!r}, {name})" for name in names]
        if post:
            body.append("  _rec_self.__post_init__()")
        # The defaults tuple is bound per class by the outer function; a factory
        # default is the marker, replaced by a fresh value in the body.
        source = (
            "def _build(_rec_d, _rec_set, _rec_factory, _rec_type):\n"
            f" def __init__(_rec_self, {params}):\n"
            + "".join(
                f"  if _rec_type({name}) is _rec_factory: {name} = {name}.make()\n"
                for name in names[first_default:]
            )
            + "\n".join(body or ["  pass"])
            + "\n return __init__\n"
        )
        namespace: dict[str, Any] = {}
        exec(source, namespace)
        builder = namespace["_build"]
        _INIT_CACHE[key] = builder
    return builder


def _repr(self: Any) -> str:
    args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__record_fields__)
    return f"{type(self).__qualname__}({args})"


def _astuple(self: Any) -> tuple[Any, ...]:
    return tuple([getattr(self, name) for name in self.__record_fields__])


def _eq(self: Any, other: object) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _astuple(self) == _astuple(other)


def _hash(self: Any) -> int:
    return hash(_astuple(self))


def _frozen(self: Any, name: str, value: object = None) -> None:
    from dataclasses import FrozenInstanceError  # only on the error path: keep import cheap

    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _getstate(self: Any) -> tuple[Any, ...]:
    return _astuple(self)


def _setstate(self: Any, state: tuple[Any, ...]) -> None:
    for name, value in zip(self.__record_fields__, state, strict=True):
        object.__setattr__(self, name, value)


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: _C) -> _C:
    """Make ``cls`` a frozen, slotted value class (see the module docstring)."""
    inherited: tuple[str, ...] = getattr(cls, "__record_fields__", ())
    defaults: dict[str, object] = dict(getattr(cls, "__record_defaults__", {}))
    names = list(inherited)
    own: list[str] = []
    # Own annotations only (inherited fields come from __record_fields__); no inspect.
    annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
    for name, annotation in annotations.items():
        if _is_classvar(annotation):
            continue
        if not name.isidentifier() or iskeyword(name):
            raise TypeError(f"{cls.__qualname__}: field name {name!r} is no identifier")
        if name.startswith("_rec_"):
            raise TypeError(f"{cls.__qualname__}: field names starting _rec_ are reserved")
        if name not in names:
            names.append(name)
            own.append(name)
        if name in cls.__dict__:
            defaults[name] = cls.__dict__[name]
        else:
            defaults.pop(name, None)
    first_default = len(names)
    for i, name in enumerate(names):
        if name in defaults:
            first_default = min(first_default, i)
        elif first_default < i:
            raise TypeError(f"{cls.__qualname__}: non-default field {name!r} follows a default")
    for value in cls.__dict__.values():
        value = getattr(value, "__func__", getattr(value, "fget", value))
        code = getattr(value, "__code__", None)
        if code is not None and "__class__" in code.co_freevars:
            # The class is rebuilt with slots: a zero-argument super() would see the old one.
            raise TypeError(f"{cls.__qualname__}: a record method cannot use super()")
    namespace = {
        key: value
        for key, value in cls.__dict__.items()
        if key not in own and key not in ("__dict__", "__weakref__")
    }
    field_names = tuple(names)
    default_values = tuple(defaults[name] for name in field_names[first_default:])
    build = _init_builder(field_names, len(default_values), hasattr(cls, "__post_init__"))
    init = build(default_values, object.__setattr__, _Factory, type)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    namespace.update(
        __slots__=tuple(own),
        __record_fields__=field_names,
        __record_defaults__=defaults,
        __match_args__=field_names,
        __init__=init,
        __repr__=_repr,
        __eq__=_eq,
        __hash__=_hash,
        __setattr__=_frozen,
        __delattr__=_frozen,
        __getstate__=_getstate,
        __setstate__=_setstate,
    )
    new: _C = type(cls)(cls.__name__, cls.__bases__, namespace)
    new.__qualname__ = cls.__qualname__
    return new
