"""The registry of user types: which classes cross the wire, under which names.

:func:`register_type` is process-global (like Go's ``gob.Register``); the registered name, not
the Python class path, identifies the class on the wire. ``BY_NAME`` and ``BY_TYPE`` are the
two views of one set of :class:`Registration` records, read by the encoder and the decoder;
only :func:`register_type` adds to them, and nothing removes.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from typing import Any, TypeVar, overload

from ..._errors import DecodeError, EncodeError
from .model import BUILTIN_TYPES

__all__ = ["Registration", "register_type", "BY_NAME", "BY_TYPE"]

_T = TypeVar("_T")



class Registration:
    """How one registered class crosses the wire."""

    __slots__ = ("cls", "name", "fields_of", "build", "nfields", "kw_names")

    def __init__(
        self,
        cls: type,
        name: str,
        fields_of: Callable[[Any], Any],
        build: Callable[..., Any],
        nfields: int | None,
        kw_names: tuple[str, ...] | None,
    ) -> None:
        self.cls = cls
        self.name = name
        self.fields_of = fields_of  # obj -> list/tuple of field values
        self.build = build  # dataclass: cls; hooks: from_fields
        self.nfields = nfields  # None for hook-based classes (any count)
        self.kw_names = kw_names  # dataclasses with kw_only fields are built by keyword

    def rebuild(self, value: list[Any] | tuple[Any, ...]) -> Any:
        """The object for a decoded ``[name, fields...]``; DecodeError on any failure."""
        fields = value[1:]
        try:
            if self.nfields is None:
                return self.build(list(fields))
            if len(fields) != self.nfields:
                raise DecodeError(
                    f"{self.name} has {self.nfields} fields, the message gives {len(fields)}"
                )
            if self.kw_names is not None:
                return self.build(**dict(zip(self.kw_names, fields)))
            return self.build(*fields)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"cannot rebuild {self.name}: {exc!r:.200}") from exc


BY_NAME: dict[str, Registration] = {}
BY_TYPE: dict[type, Registration] = {}


def _dataclass_getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if not names:
        return lambda obj: ()
    if len(names) == 1:
        name = names[0]
        return lambda obj: (getattr(obj, name),)
    return operator.attrgetter(*names)


def _checked_hook_fields(to_fields: Callable[[Any], Any], name: str) -> Callable[[Any], Any]:
    def fields_of(obj: Any) -> Any:
        fields = to_fields(obj)
        if type(fields) is tuple:
            return fields
        if type(fields) is not list:
            raise EncodeError(f"to_fields of {name} must return a list or tuple, not {type(fields).__name__}")
        return tuple(fields)  # a snapshot: the hook may hand out a list another thread changes

    return fields_of


@overload
def register_type(cls: type[_T], /, *, name: str | None = ..., to_fields: Callable[[Any], Any] | None = ...,
                  from_fields: Callable[[list[Any]], Any] | None = ...) -> type[_T]: ...
@overload
def register_type(cls: None = ..., /, *, name: str | None = ..., to_fields: Callable[[Any], Any] | None = ...,
                  from_fields: Callable[[list[Any]], Any] | None = ...) -> Callable[[type[_T]], type[_T]]: ...


def register_type(
    cls: type[Any] | None = None,
    /,
    *,
    name: str | None = None,
    to_fields: Callable[[Any], Any] | None = None,
    from_fields: Callable[[list[Any]], Any] | None = None,
) -> Any:
    """Let instances of ``cls`` cross between nodes, identified on the wire by ``name``.

    Usable as ``@register_type``, ``@register_type(name="chat.Message")`` or
    ``register_type(cls, name=...)``; returns ``cls``. A dataclass is sent as its fields in
    field order and rebuilt with ``cls(*fields)`` (every field must be an ``init`` field). Any
    other class needs both hooks: ``to_fields(obj) -> list`` (may be called more than once per
    send, so it must not have side effects) and ``from_fields(list) -> obj``. The default name
    is ``f"{cls.__module__}.{cls.__qualname__}"``; every node must register the same name.

    Registering the same class under the same name again does nothing. Raises ``ValueError``
    when the name is taken by another class or the class is registered under another name,
    ``TypeError`` for a non-class, a built-in type the codec already handles, a non-dataclass
    without hooks, or only one hook.
    """
    if cls is None:
        def decorator(c: type[_T]) -> type[_T]:
            return register_type(c, name=name, to_fields=to_fields, from_fields=from_fields)

        return decorator
    if not isinstance(cls, type):
        raise TypeError(f"register_type needs a class, not {cls!r:.80}")
    if cls in BUILTIN_TYPES:
        raise TypeError(f"{cls.__qualname__} is encoded natively and cannot be registered")
    if name is None:
        name = f"{cls.__module__}.{cls.__qualname__}"
    if type(name) is not str or not name:
        raise TypeError("name must be a non-empty str")
    if (to_fields is None) != (from_fields is None):
        raise TypeError("give both to_fields and from_fields, or neither (dataclasses)")
    existing = BY_TYPE.get(cls)
    if existing is not None:
        if existing.name == name:
            return cls
        raise ValueError(f"{cls.__qualname__} is already registered as {existing.name!r}")
    other = BY_NAME.get(name)
    if other is not None:
        raise ValueError(f"the name {name!r} is already registered for {other.cls.__module__}.{other.cls.__qualname__}")

    if to_fields is not None and from_fields is not None:
        if not callable(to_fields) or not callable(from_fields):
            raise TypeError("to_fields and from_fields must be callable")
        reg = Registration(cls, name, _checked_hook_fields(to_fields, name), from_fields, None, None)
    else:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(
                f"{cls.__qualname__} is not a dataclass: pass to_fields= and from_fields= to register it"
            )
        fields = dataclasses.fields(cls)
        not_init = [f.name for f in fields if not f.init]
        if not_init:
            raise TypeError(
                f"{cls.__qualname__} has init=False fields {not_init}: pass to_fields= and from_fields="
            )
        names = tuple(f.name for f in fields)
        kw_only = any(getattr(f, "kw_only", False) is True for f in fields)
        reg = Registration(cls, name, _dataclass_getter(names), cls, len(names), names if kw_only else None)

    BY_NAME[name] = reg
    BY_TYPE[cls] = reg
    return cls
