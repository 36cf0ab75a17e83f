"""Checks of the handlers given to subscribe (SPEC, binding).

A pub/sub or sync handler must be a coroutine function (it is awaited on every message), and
a queue ``process`` must also take ``(message, ctx)``. Both are checked when subscribing, so
a handler that could never run raises :class:`TypeError` naming the channel at the call,
instead of failing on every message (pub/sub) or sending every message to the dead queue
(event queues). The checks are the same in both modes: the managers are shared by the
backends.

Accepted as a coroutine function: an ``async def`` function or bound method, a
:func:`functools.partial` of one, an object whose class defines ``async def __call__``, and
:class:`unittest.mock.AsyncMock`.
"""

from __future__ import annotations

import functools
import inspect
import reprlib


def check_handler(channel: str, handler: object, *, what: str) -> None:
    """Raise :class:`TypeError` naming ``channel`` unless ``handler`` is a coroutine
    function (see the module docstring); ``what`` names the handler's kind in the message,
    e.g. ``"pub/sub handler"`` or ``"sync handler"``."""
    if not is_coroutine_function(handler):
        raise TypeError(
            f"{what} for channel {channel!r} must be an async function "
            f"(async def handler(message)), got {describe(handler)}"
        )


def check_process(channel: str, process: object) -> None:
    """Raise :class:`TypeError` naming ``channel`` unless ``process`` is a coroutine function
    that can be called with two positional arguments, ``process(message, ctx)``. A callable
    whose signature cannot be read (some builtins) is accepted when it is a coroutine
    function."""
    if not (callable(process) and is_coroutine_function(process)):
        raise TypeError(
            f"queue process for channel {channel!r} must be an async function "
            f"(async def process(message, ctx)), got {describe(process)}"
        )
    try:
        signature = inspect.signature(process)
    except ValueError:  # no signature to read: accepted
        return
    try:
        signature.bind(None, None)
    except TypeError as exc:
        raise TypeError(
            f"queue process for channel {channel!r} must take (message, ctx): "
            f"{describe(process)}{signature} cannot be called with two positional "
            f"arguments ({exc})"
        ) from None


def is_coroutine_function(handler: object) -> bool:
    """True when calling ``handler`` returns a coroutine by its definition: a coroutine
    function or method, a :func:`functools.partial` of one, or an object whose ``__call__``
    is one."""
    if not callable(handler):
        return False
    while isinstance(handler, functools.partial):
        handler = handler.func
    if inspect.iscoroutinefunction(handler):
        return True
    if inspect.isroutine(handler) or inspect.isclass(handler):
        return False  # a plain function or method, or a class (calling it makes an instance)
    # an instance of a class with ``async def __call__`` (callable was checked above: this
    # reads the bound method, it does not test callability)
    call = getattr(handler, "__call__", None)  # noqa: B004
    return call is not None and inspect.iscoroutinefunction(call)


def describe(handler: object) -> str:
    """``handler`` for an error message: its kind and qualified name when it has one (no
    address), else a short repr."""
    if isinstance(handler, functools.partial):
        return f"functools.partial of {describe(handler.func)}"
    qualname = getattr(handler, "__qualname__", None)
    if isinstance(qualname, str):
        return f"{type(handler).__name__} {qualname}"
    if type(handler).__repr__ is object.__repr__:
        return f"{type(handler).__qualname__} object"
    return f"{type(handler).__qualname__} {reprlib.repr(handler)}"


__all__ = ["check_handler", "check_process", "describe", "is_coroutine_function"]
