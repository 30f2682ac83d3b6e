"""Which peer keyframes may enter this robot's map, and how many may wait.

Refusals, each counted by reason (the node reports the counts in /diagnostics): the robot's own
keyframes coming back (`own_echo`, never treated as a peer's), robots not in `fleet.peers` when
it is set (`not_a_peer`), another encoder (`other_encoder`), malformed content (`malformed`),
and keyframes already held (`duplicate`). A peer that floods fills only its own bounded queue:
the oldest waiting keyframe is dropped (`queue_dropped`), and the queues are drained round-robin,
so one robot cannot starve the others.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable

from ..errors import ConfigError
from .wire import PeerKeyframe, check_peer_keyframe


class PeerGate:
    def __init__(self, robot_id: str, map_id: str, peers: frozenset[str] = frozenset(),
                 encoder_refusal: Callable[[str], str | None] = lambda _: None, queue_size: int = 200,
                 held: Callable[[tuple[str, str, int]], bool] = lambda _: False,
                 log: Callable[[str], None] = lambda _: None) -> None:
        self.robot_id, self.map_id = robot_id, map_id
        self.peers = peers
        self.encoder_refusal = encoder_refusal
        self.queue_size = queue_size
        self.held = held  # is this (robot, map, keyframe id) already in the map?
        self.log = log  # told once per peer and reason (a flood of refusals is one line)
        self.counts: Counter[str] = Counter()
        self.received: Counter[str] = Counter()  # accepted into a queue, per peer
        self._queues: OrderedDict[str, deque[PeerKeyframe]] = OrderedDict()
        self._queued: set[tuple[str, str, int]] = set()
        self._told: set[tuple[str, str]] = set()

    def _refuse(self, reason: str, peer: str, detail: str) -> str:
        self.counts[reason] += 1
        if (peer, reason) not in self._told:
            self._told.add((peer, reason))
            self.log(f"fleet: keyframes from robot {peer or '(unnamed)'} refused ({reason}): {detail} (said once per "
                     "robot; counted in diagnostics)")
        return reason

    def is_echo(self, robot_id: str, map_id: str) -> bool:
        """This robot's own keyframes (its robot id or its map) coming back on the shared topic."""
        return robot_id == self.robot_id or map_id == self.map_id

    def offer(self, kf: PeerKeyframe) -> str | None:
        """Queue a peer keyframe for the map; returns the refusal reason, or None when queued."""
        if self.is_echo(kf.robot_id, kf.map_id):
            self.counts["own_echo"] += 1  # our own keyframes on the shared topic: normal, not logged
            return "own_echo"
        try:
            check_peer_keyframe(kf)
        except (ValueError, ConfigError) as exc:
            return self._refuse("malformed", kf.robot_id, str(exc))
        if self.peers and kf.robot_id not in self.peers:
            return self._refuse("not_a_peer", kf.robot_id, f"not in fleet.peers ({', '.join(sorted(self.peers))})")
        why = self.encoder_refusal(kf.encoder_id)
        if why is not None:
            return self._refuse("other_encoder", kf.robot_id, why)
        if kf.key in self._queued or self.held(kf.key):
            self.counts["duplicate"] += 1
            return "duplicate"
        q = self._queues.setdefault(kf.robot_id, deque())
        if len(q) >= self.queue_size:
            old = q.popleft()
            self._queued.discard(old.key)
            self._refuse("queue_dropped", kf.robot_id, f"more than {self.queue_size} keyframes waiting: the oldest "
                         "are dropped (a catch-up request fetches them again)")
        q.append(kf)
        self._queued.add(kf.key)
        self.received[kf.robot_id] += 1
        return None

    def take(self, n: int) -> list[PeerKeyframe]:
        """Up to n queued keyframes, one peer at a time in turn."""
        out: list[PeerKeyframe] = []
        while len(out) < n and self._queues:
            for peer in list(self._queues):
                q = self._queues[peer]
                kf = q.popleft()
                self._queued.discard(kf.key)
                out.append(kf)
                if not q:
                    del self._queues[peer]
                if len(out) >= n:
                    break
        return out

    def waiting_from(self, robot_id: str) -> int:
        q = self._queues.get(robot_id)
        return len(q) if q is not None else 0

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())
