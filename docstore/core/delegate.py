"""``delegate``: a method of a composed object that is one of its parts' methods.

In a class body, ``fetch = delegate(Database.fetch, "_db")`` makes ``obj.fetch`` the bound
method ``obj._db.fetch``: the part's own method, so its signature, docstring, metrics timing
(:func:`docstore.metrics.timed`) and errors are exactly the part's, ``help()`` and
``inspect.signature`` show them, and a call costs no extra frame. mypy sees the part's
signature (generic methods stay generic). This is how :class:`docstore.Store` and
:class:`~docstore.core.database.Database` are composed of their parts rather than inheriting
from them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, overload

P = ParamSpec("P")
R = TypeVar("R", covariant=True)


class delegate(Generic[P, R]):
    """``name = delegate(Part.name, "_part")``: ``obj.name`` is ``obj._part.name``."""

    def __init__(self, method: Callable[Concatenate[Any, P], R], to: str) -> None:
        # __name__, __qualname__, __doc__ and __wrapped__ (for help() and inspect.signature)
        functools.update_wrapper(self, method, updated=())
        self._method: Any = method
        self._to = to

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Self: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> Callable[P, R]: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        part = getattr(obj, self._to)
        return self._method.__get__(part, type(part))

    def __call__(self, obj: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        """``Class.name(obj, ...)``, as for a plain method."""
        method: Callable[P, R] = self.__get__(obj)
        return method(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<delegate {self._method.__qualname__} via {self._to}>"
