"""The context an entry is sent in: the current run, step and request.

Held in :mod:`contextvars`, so it follows ``asyncio`` tasks (each task starts with a copy
of its creator's context), ``asyncio.to_thread`` and ``contextvars.copy_context().run``.
A plain ``threading.Thread`` starts with an *empty* context: code in such a thread is
outside any run or request unless it is run through ``copy_context().run``.

:func:`eventlog.run` and :func:`eventlog.step` set the scope; :func:`fill_entries` is
what ``send()`` calls to fill the ``run_id``/``step_id`` an entry leaves unset. It is
only called once a scope has ever been entered in this process (:data:`used`), so an
application that never uses them pays one global load per ``send()``.
"""

from __future__ import annotations

import uuid
from contextvars import ContextVar, Token
from dataclasses import fields
from typing import Any

from eventlog.events import EventPayload, ProxyLogEvent, RequestMetadata

__all__ = [
    "Scope",
    "current_run_id",
    "current_scope",
    "current_step_id",
    "fill_entries",
    "get_request_id",
    "leave_scope",
    "reset_request_id",
    "set_request_id",
]


class Scope:
    """Where the code runs: a run, and the innermost step of it (or None).

    ``sender`` is what the run or step sends its events with (opaque here), so that a
    nested step without a ``sender=`` of its own sends where its parent does.
    """

    __slots__ = ("run_id", "sender", "step_id")

    def __init__(self, run_id: uuid.UUID, step_id: uuid.UUID | None, sender: Any) -> None:
        self.run_id = run_id
        self.step_id = step_id
        self.sender = sender

    def __repr__(self) -> str:
        return f"<Scope run_id={self.run_id} step_id={self.step_id}>"


_scope: ContextVar[Scope | None] = ContextVar("eventlog_scope", default=None)
_request_id: ContextVar[str | None] = ContextVar("eventlog_request_id", default=None)

used = False
"""Whether a run or step has ever been entered in this process: ``send()`` fills entries
only once it is true (it never goes back to false)."""


def current_scope() -> Scope | None:
    """The innermost run/step around the caller, or None."""
    return _scope.get()


def current_run_id() -> uuid.UUID | None:
    """The id of the run the caller is in (:func:`eventlog.run`), or None."""
    scope = _scope.get()
    return None if scope is None else scope.run_id


def current_step_id() -> uuid.UUID | None:
    """The id of the innermost step the caller is in (:func:`eventlog.step`), or None."""
    scope = _scope.get()
    return None if scope is None else scope.step_id


def enter_scope(scope: Scope) -> Token[Scope | None]:
    """Make ``scope`` current (for :mod:`eventlog.instrument`); undo with :func:`exit_scope`."""
    global used
    used = True
    return _scope.set(scope)


def exit_scope(token: Token[Scope | None]) -> None:
    """Restore the scope that was current before :func:`enter_scope` gave ``token``."""
    _scope.reset(token)


def leave_scope() -> None:
    """No run or step is current from here on in this context: the collector calls it
    for the events other programs post, which must never take the ids of a run the
    serving process happens to be in."""
    if _scope.get() is not None:
        _scope.set(None)


def get_request_id() -> str | None:
    """The id of the request being handled (set by the ASGI middleware), or None."""
    return _request_id.get()


def set_request_id(value: str | None) -> Token[str | None]:
    """Set the current request id; pass the token to :func:`reset_request_id` after.
    Every event sent meanwhile carries it (see :func:`fill_entries`)."""
    global used
    used = True
    return _request_id.set(value)


def reset_request_id(token: Token[str | None]) -> None:
    """Restore the request id that was current before :func:`set_request_id`."""
    _request_id.reset(token)


def fill_entries(entry: object) -> None:
    """Fill ``run_id``/``step_id`` of ``entry`` (or of each entry of a sequence) that
    are unset, from the current scope, and add the current request id (see
    :func:`_tag_request`); anything else is left alone.

    An entry is changed in place (it has an id of its own, so it is sent once); the
    :class:`~eventlog.RequestMetadata` of an LLM call is replaced rather than changed, as
    an application may share one between calls. ``step_id`` is only filled when the
    entry belongs to the current run (its ``run_id`` unset or the same).
    """
    scope = _scope.get()
    request_id = _request_id.get()
    if scope is None and request_id is None:
        return
    items = entry if isinstance(entry, (list, tuple)) else (entry,)
    for item in items:
        if isinstance(item, (ProxyLogEvent, EventPayload)):
            if scope is not None:
                _fill(item, scope)
            if request_id is not None:
                _tag_request(item, request_id)


def _tag_request(entry: ProxyLogEvent | EventPayload, request_id: str) -> None:
    """``request_id`` into an LLM call's ``metadata`` extras (its ``meta`` column), or a
    generic event's ``data`` when that is an object; one the entry has is kept."""
    if isinstance(entry, ProxyLogEvent):
        meta = entry.metadata
        if isinstance(meta, RequestMetadata) and "request_id" not in (meta.extra or {}):
            meta = entry.metadata = _copy(meta)
            meta.extra = {**(meta.extra or {}), "request_id": request_id}
    elif isinstance(entry.data, dict) and "request_id" not in entry.data:
        entry.data = {**entry.data, "request_id": request_id}
    elif entry.data is None:
        entry.data = {"request_id": request_id}


def _fill(entry: ProxyLogEvent | EventPayload, scope: Scope) -> None:
    if isinstance(entry, ProxyLogEvent):
        meta = entry.metadata
        if not isinstance(meta, RequestMetadata):
            return  # replaced after construction by something else: the writer copes
        if meta.run_id is None:
            meta = entry.metadata = _copy(meta)
            meta.run_id = scope.run_id
            if meta.step_id is None:
                meta.step_id = scope.step_id
        elif meta.step_id is None and scope.step_id is not None and meta.run_id == scope.run_id:
            meta = entry.metadata = _copy(meta)
            meta.step_id = scope.step_id
    else:
        if entry.run_id is None:
            entry.run_id = scope.run_id
            if entry.step_id is None:
                entry.step_id = scope.step_id
        elif entry.step_id is None and entry.run_id == scope.run_id:
            entry.step_id = scope.step_id


_METADATA_FIELDS = tuple(f.name for f in fields(RequestMetadata))


def _copy(meta: RequestMetadata) -> RequestMetadata:
    """A shallow copy, field by field: a third of ``dataclasses.replace``'s cost, which
    goes through ``__init__`` (this is on ``send()``'s path inside a run)."""
    copy = object.__new__(RequestMetadata)
    for name in _METADATA_FIELDS:
        setattr(copy, name, getattr(meta, name))
    return copy
