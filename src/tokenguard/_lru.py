"""A small bounded LRU map on ``OrderedDict`` (C-implemented): the hot-path caches use it.

``cachetools.LRUCache`` is pure Python and costs about three times as much per hit; this keeps the
verified-token and route caches cheap while staying bounded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A map of at most ``maxsize`` entries; the least recently used goes first."""

    __slots__ = ("_data", "maxsize")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()

    # Each operation tolerates another thread (one event loop per thread) evicting the same key
    # between two steps: a lost race costs a cache miss, never a KeyError.

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            try:  # noqa: SIM105 - a plain try is cheaper than contextlib.suppress on the hot path
                self._data.move_to_end(key)
            except KeyError:
                pass
        return value

    def __setitem__(self, key: K, value: V) -> None:
        data = self._data
        data[key] = value
        try:
            data.move_to_end(key)
            while len(data) > self.maxsize:
                data.popitem(last=False)
        except KeyError:
            pass

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._data.pop(key, default)

    def items(self) -> list[tuple[K, V]]:
        return list(self._data.items())

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._data))
