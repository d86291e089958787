"""Event-time tumbling windows with grace and retention, and typed state keys.

Every KPI processor folds events into windows of event time and forgets them later; this module says once what
those words mean, so that a processor states its windows instead of writing the arithmetic (after quixstreams'
window definitions: a duration and a grace, expiry measured from the newest event time seen):

- a window ``[start, start + duration)`` is aligned to ``offset`` (day windows: Hanoi's midnight, 17:00 UTC);
- it *accepts* an input (a late one revises it) while the watermark (the newest event time the partition has
  seen, or ``now``) is before ``end + grace``: the revisable horizon. Later inputs are counted as ignored
  (``StreamProcessor.ignored_late``) and dropped, never re-opening a window with a partial value;
- it is *expired* (its state evicted) once the watermark reaches ``end + retention`` (``retention`` defaults to
  ``grace``; a processor keeps a window longer than it accepts some inputs when another input kind has a longer
  grace).

State keys stay strings (the changelog's keys, so existing changelogs load unchanged), but a processor builds
and reads them through a :class:`KeySpace` of a ``NamedTuple``: ``SESSIONS.key(WindowedEntity(3600, ws, k))``
→ ``"s:3600:<ws>:<k>"``, and ``SESSIONS.parse(text)`` gives the typed key back, instead of f-strings joined in
one place and ``split(":")`` in another.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, NamedTuple, TypeVar

from shared.stream.processor import State

__all__ = ["KeySpace", "TumblingWindows", "WindowedEntity"]


class TumblingWindows:
    """Tumbling windows of ``duration`` seconds aligned to ``offset``, revisable for ``grace`` seconds after
    their end and kept until ``retention`` seconds after it (default: ``grace``)."""

    __slots__ = ("duration", "grace", "offset", "retention")

    def __init__(self, duration: int, *, grace: int = 0, retention: int | None = None, offset: int = 0):
        if duration <= 0:
            raise ValueError(f"a window lasts a positive number of seconds, not {duration}")
        if grace < 0:
            raise ValueError(f"grace is a duration (seconds >= 0), not {grace}")
        retention = grace if retention is None else retention
        if retention < grace:
            raise ValueError(
                f"retention ({retention} s) must cover grace ({grace} s): a window is kept while revisable"
            )
        self.duration = duration
        self.grace = grace
        self.retention = retention
        self.offset = offset

    def __repr__(self) -> str:
        return f"TumblingWindows({self.duration}, grace={self.grace}, retention={self.retention}, offset={self.offset})"

    def start(self, t: float) -> int:
        """Start of the window holding event time ``t`` (Unix seconds)."""
        local = t + self.offset
        return int(local // self.duration) * self.duration - self.offset

    def end(self, start: int) -> int:
        return start + self.duration

    def revisable_until(self, start: int) -> int:
        """The watermark from which the window ``start`` accepts no more input (its end + grace)."""
        return start + self.duration + self.grace

    def accepts(self, start: int, watermark: float) -> bool:
        """Whether an input of the window ``start`` still revises it at ``watermark``."""
        return watermark < start + self.duration + self.grace

    def expired(self, start: int, watermark: float) -> bool:
        """Whether the window ``start`` is past its retention at ``watermark`` (its state may be evicted)."""
        return start + self.duration + self.retention <= watermark

    def behind(self, start: float, newest: float) -> bool:
        """Whether the window ``start`` is past the retention counted back from its series' newest window start
        ``newest`` rather than from a watermark: ``newest - start > duration + retention``. A window exactly
        ``duration + retention`` behind is still kept (and revisable): the series' newest window, not an event
        time, marks the horizon, so a catch-up racing through event time does not evict windows early."""
        return start + self.duration + self.retention < newest

    def horizon(self, watermark: float) -> int:
        """Start of the oldest window not expired at ``watermark``: what is older than this is needed by no
        window kept (e.g. history a window's KPI is computed from)."""
        return self.start(watermark - self.duration - self.retention) + self.duration


K = TypeVar("K", bound=tuple)


class WindowedEntity(NamedTuple):
    """The key of one entity's (or area's) aggregate in one window: ``<head>:<duration>:<start>:<entity>``."""

    duration: int
    start: int
    entity: str


class KeySpace(Generic[K]):
    """State keys of one kind: ``head`` + ``head_sep`` + the fields of a ``NamedTuple``, joined with ``sep``
    (``head_sep`` defaults to ``sep``; the city's keys are ``g:<kpi>|<level>|...``, fields joined with ``|`` so
    that an ISO window start, which holds colons, can be one).

    The last field may itself contain ``sep`` (an entity id with colons); every other field is converted back
    to its annotated type (``int``, ``float`` or ``str``) by :meth:`parse`.
    """

    __slots__ = (
        "_convert",
        "_fields",
        "_last",
        "_make",
        "_strings",
        "_typed",
        "head",
        "head_sep",
        "key_type",
        "prefix",
        "sep",
    )

    def __init__(self, head: str, key_type: type[K], sep: str = ":", *, head_sep: str | None = None):
        self.head = head
        self.key_type = key_type
        self.sep = sep
        self.head_sep = sep if head_sep is None else head_sep
        #: the text every key of this space starts with (``State.items(prefix)`` reads them by head)
        self.prefix = head + self.head_sep
        hints = typing.get_type_hints(key_type)
        self._fields: tuple[str, ...] = key_type._fields  # type: ignore[attr-defined]  # a NamedTuple's fields
        self._make: Callable[[Iterable[Any]], K] = key_type._make  # type: ignore[attr-defined]
        self._last = len(self._fields) - 1
        converters: dict[Any, Callable[[str], Any]] = {int: int, float: float, str: str}
        try:
            self._convert = tuple(converters[hints[f]] for f in self._fields)
        except KeyError as exc:
            raise TypeError(f"{key_type.__name__}: key fields must be int, float or str ({exc})") from None
        # Keys are built and read on processors' hot paths: fields that are all strings skip the conversions,
        # and only the fields that are not strings are converted.
        self._strings = all(c is str for c in self._convert)
        self._typed: tuple[tuple[int, Callable[[str], Any]], ...] = tuple(
            (i, c) for i, c in enumerate(self._convert) if c is not str
        )

    def key(self, value: K) -> str:
        """The state key of ``value``."""
        if self._strings:
            return self.prefix + self.sep.join(value)
        return self.prefix + self.sep.join(map(str, value))

    def parse(self, key: str) -> K:
        """The typed key of a state key of this space (``ValueError`` for another space's)."""
        if not key.startswith(self.prefix):
            raise ValueError(
                f"{key!r} is not a {self.key_type.__name__} key (it does not start {self.prefix!r})"
            )
        parts = key[len(self.prefix) :].split(self.sep, self._last)
        if len(parts) != self._last + 1:
            raise ValueError(
                f"{key!r} is not a {self.key_type.__name__} key ({self.prefix!r} and {self._last + 1} fields)"
            )
        for i, convert in self._typed:
            parts[i] = convert(parts[i])
        return self._make(parts)

    def within(self, *leading: Any) -> str:
        """The prefix of the keys whose first fields are ``leading`` (e.g. one window's keys)."""
        if not leading:
            return self.prefix
        return self.prefix + self.sep.join(map(str, leading)) + self.sep

    def items(self, state: State, *leading: Any) -> Iterator[tuple[K, Any]]:
        """(typed key, value) of this space in ``state``, optionally only those whose first fields are
        ``leading`` (a snapshot: the state may change while iterating)."""
        parse = self.parse
        return ((parse(k), v) for k, v in state.items(self.within(*leading)))

    def keys(self, state: State, *leading: Any) -> list[K]:
        parse = self.parse
        return [parse(k) for k in state.keys(self.within(*leading))]

    def evict_expired(
        self, state: State, windows: Callable[[K], TumblingWindows | None], watermark: float, start_field: str
    ) -> int:
        """Pop the keys of this space whose window (``windows(key)``; ``None``: not windowed, kept) is expired at
        ``watermark``, the window's start read from the key's ``start_field``. Returns how many were popped."""
        popped = 0
        index = self._fields.index(start_field)
        parse = self.parse
        for text in state.keys(self.prefix):
            k = parse(text)
            w = windows(k)
            if w is not None and w.expired(k[index], watermark):
                state.pop(text)
                popped += 1
        return popped
