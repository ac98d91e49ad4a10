"""The registry of user types: which classes cross the wire, under which names.

:func:`register_type` is process-global (like Go's ``gob.Register``); the registered name, not
the Python class path, identifies the class on the wire. ``BY_NAME`` and ``BY_TYPE`` are the
two views of one set of :class:`Registration` records, read by the encoder and the decoder;
only :func:`register_type` adds to them, and nothing removes.

Field checks (``register_type(..., check_fields=True)``, dataclasses only): each field's
annotation, resolved once at registration, becomes the set of exact types its value may have
(a class; a union of classes and None; ``Any`` or ``object`` for anything). The decoder checks
them before building the object (:class:`~reign.DecodeError`, which closes that peer's
connection like any undecodable payload), and the encoder when it writes one
(:class:`~reign.EncodeError`, so a sender learns of it instead of its peer). The library's
own message types use it (``reign._core.messages``). Only registrations that ask for checks
pay for them: the encoder reaches them through the registration's ``fields_of``, the decoder
through :meth:`Registration.rebuild`, and neither is on the path of a message without
registered objects.
"""

from __future__ import annotations

import dataclasses
import operator
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar, overload

from ..._errors import DecodeError, EncodeError
from .model import BUILTIN_TYPES

__all__ = ["Registration", "FieldCheck", "register_type", "BY_NAME", "BY_TYPE"]

_T = TypeVar("_T")
_NoneType = type(None)

#: One checked field: (position, name, exact types a decoded value may have, exact types an
#: encoded one may have (a ``bytes`` field also takes a bytearray: it is sent as bytes), the
#: expected types as the error message says them).
FieldCheck = tuple[int, str, frozenset[type], frozenset[type], str]


class Registration:
    """How one registered class crosses the wire."""

    __slots__ = ("cls", "name", "fields_of", "build", "nfields", "kw_names", "checks")

    def __init__(
        self,
        cls: type,
        name: str,
        fields_of: Callable[[Any], Any],
        build: Callable[..., Any],
        nfields: int | None,
        kw_names: tuple[str, ...] | None,
        checks: tuple[FieldCheck, ...] | None = None,
    ) -> None:
        self.cls = cls
        self.name = name
        self.fields_of = fields_of  # obj -> list/tuple of field values (checked, if checks)
        self.build = build  # dataclass: cls; hooks: from_fields
        self.nfields = nfields  # None for hook-based classes (any count)
        self.kw_names = kw_names  # dataclasses with kw_only fields are built by keyword
        self.checks = checks  # None: check_fields=False; () if no field needs a check

    def check(self, fields: Any, error: type[DecodeError] | type[EncodeError]) -> None:
        """Raise ``error`` naming the first field whose value's type is not allowed."""
        encoding = error is EncodeError
        for index, field, decoded, encoded, expected in self.checks or ():
            t = type(fields[index])
            if t not in (encoded if encoding else decoded):
                raise error(f"{self.name}.{field} must be {expected}, not {_type_name(t)}")

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
            if self.checks is not None:
                self.check(fields, DecodeError)
            if self.kw_names is not None:
                return self.build(**dict(zip(self.kw_names, fields)))
            return self.build(*fields)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"cannot rebuild {self.name}: {exc!r:.200}") from exc


BY_NAME: dict[str, Registration] = {}
BY_TYPE: dict[type, Registration] = {}


def _type_name(t: type) -> str:
    if t is _NoneType:
        return "None"
    if t.__module__ == "builtins" or t.__module__.startswith("reign."):
        return t.__qualname__
    return f"{t.__module__}.{t.__qualname__}"


def _allowed_types(hint: Any, where: str) -> frozenset[type] | None:
    """The exact types a field annotated ``hint`` accepts; None for anything."""
    if hint is Any or hint is object:
        return None
    if hint is None or hint is _NoneType:
        return frozenset({_NoneType})
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        allowed: set[type] = set()
        for member in typing.get_args(hint):
            sub = _allowed_types(member, where)
            if sub is None:
                return None
            allowed |= sub
        return frozenset(allowed)
    if origin is not None or not isinstance(hint, type):
        raise TypeError(
            f"{where}: check_fields checks exact classes, unions of them (with None) and Any, "
            f"not {hint!r}; annotate the class (list, not list[int]) or Any"
        )
    if hint is bytearray:
        raise TypeError(f"{where}: a bytearray arrives as bytes: annotate bytes")
    return frozenset({hint})


def _field_checks(cls: type, fields: tuple[dataclasses.Field[Any], ...]) -> tuple[FieldCheck, ...]:
    """The checks of a dataclass's fields, from its annotations (TypeError if unusable)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:
        raise TypeError(f"cannot resolve the annotations of {cls.__qualname__} for check_fields: {exc!r}") from exc
    checks = []
    for index, f in enumerate(fields):
        allowed = _allowed_types(hints[f.name], f"{cls.__qualname__}.{f.name}")
        if allowed is None:
            continue
        encoded = allowed | {bytearray} if bytes in allowed else allowed
        names = sorted(_type_name(t) for t in allowed if t is not _NoneType)
        expected = " or ".join(names + ["None"] * (_NoneType in allowed))
        checks.append((index, f.name, allowed, frozenset(encoded), expected))
    return tuple(checks)


def _checked_fields(getter: Callable[[Any], tuple[Any, ...]], reg: Registration) -> Callable[[Any], tuple[Any, ...]]:
    """``getter``, then the registration's field checks (EncodeError)."""

    def fields_of(obj: Any) -> tuple[Any, ...]:
        fields = getter(obj)
        reg.check(fields, EncodeError)
        return fields

    return fields_of


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
                  from_fields: Callable[[list[Any]], Any] | None = ..., check_fields: bool = ...) -> type[_T]: ...
@overload
def register_type(cls: None = ..., /, *, name: str | None = ..., to_fields: Callable[[Any], Any] | None = ...,
                  from_fields: Callable[[list[Any]], Any] | None = ...,
                  check_fields: bool = ...) -> Callable[[type[_T]], type[_T]]: ...


def register_type(
    cls: type[Any] | None = None,
    /,
    *,
    name: str | None = None,
    to_fields: Callable[[Any], Any] | None = None,
    from_fields: Callable[[list[Any]], Any] | None = None,
    check_fields: bool = False,
) -> Any:
    """Let instances of ``cls`` cross between nodes, identified on the wire by ``name``.

    Usable as ``@register_type``, ``@register_type(name="chat.Message")`` or
    ``register_type(cls, name=...)``; returns ``cls``. A dataclass is sent as its fields in
    field order and rebuilt with ``cls(*fields)`` (every field must be an ``init`` field). Any
    other class needs both hooks: ``to_fields(obj) -> list`` (may be called more than once per
    send, so it must not have side effects) and ``from_fields(list) -> obj`` (called twice for
    an object used as a map key in a large message, so side-effect free as well). The default name
    is ``f"{cls.__module__}.{cls.__qualname__}"``; every node must register the same name.

    Field values are not checked against annotations unless ``check_fields=True`` (dataclasses
    only): then each field's annotation, resolved now with :func:`typing.get_type_hints`, must
    be a class, a union of classes and ``None`` (``MailboxID | None``), or ``Any``/``object``
    (not checked), and types are matched exactly, as the codec matches them (an ``int`` field
    refuses ``True`` and ``1.0``; a ``float`` field refuses ``1``; a ``bytes`` field also takes
    a bytearray when sending). A received object with a field of another type is a
    :class:`~reign.DecodeError` (so the connection it came on is closed), and sending one is
    an :class:`~reign.EncodeError`. Checks cost nothing for messages without such objects.

    Registering the same class under the same name (and ``check_fields``) again does nothing.
    Raises ``ValueError`` when the name is taken by another class or the class is registered
    under another name or with the other ``check_fields``; ``TypeError`` for a non-class, a
    built-in type the codec already handles, a non-dataclass without hooks, only one hook,
    ``check_fields`` with hooks (``from_fields`` checks what it is given), or an annotation
    ``check_fields`` cannot check (``list[int]``, a ``TypeVar``, a ``Literal``, a name that
    does not resolve).
    """
    if cls is None:
        def decorator(c: type[_T]) -> type[_T]:
            return register_type(c, name=name, to_fields=to_fields, from_fields=from_fields,
                                 check_fields=check_fields)

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
    if type(check_fields) is not bool:
        raise TypeError("check_fields must be a bool")
    if check_fields and to_fields is not None:
        raise TypeError("check_fields is for dataclasses: from_fields checks the fields it is given")
    existing = BY_TYPE.get(cls)
    if existing is not None:
        if existing.name == name:
            if (existing.checks is not None) != check_fields:
                raise ValueError(f"{cls.__qualname__} is already registered with check_fields={not check_fields}")
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
        getter = _dataclass_getter(names)
        reg = Registration(cls, name, getter, cls, len(names), names if kw_only else None)
        if check_fields:
            reg.checks = _field_checks(cls, fields)
            reg.fields_of = _checked_fields(getter, reg)

    BY_NAME[name] = reg
    BY_TYPE[cls] = reg
    return cls
