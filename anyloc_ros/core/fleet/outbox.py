"""What a robot still has to send of its own map on the fleet topic, oldest first.

Keyframes enter when they are added (live), when the robot starts (its newest `history_depth`,
so a peer that was away sees it again), and when a peer asks to catch up after an id. The map
holds the content, so the outbox holds only ids: a bandwidth budget delays keyframes, it never
drops them, and a catch-up of the whole map costs eight bytes per keyframe until it is sent.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable


class Outbox:
    def __init__(self) -> None:
        self._heap: list[int] = []
        self._ids: set[int] = set()

    def add(self, ids: Iterable[int]) -> int:
        """Queue keyframe ids (already queued ones once); returns how many were new."""
        n = 0
        for i in ids:
            i = int(i)
            if i not in self._ids:
                self._ids.add(i)
                heapq.heappush(self._heap, i)
                n += 1
        return n

    def peek(self) -> int | None:
        return self._heap[0] if self._heap else None

    def pop(self) -> int:
        i = heapq.heappop(self._heap)
        self._ids.discard(i)
        return i

    def __len__(self) -> int:
        return len(self._heap)
