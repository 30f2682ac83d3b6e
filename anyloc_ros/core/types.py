"""Small records shared by the map, the re-ranker and the loop-closure filter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .geometry import Pose


@dataclass
class Keyframe:
    id: int
    session: str
    stamp_ns: int
    frame_id: str = ""
    pose: Pose | None = None


@dataclass
class Match:
    """One search result: a map keyframe and its similarity to the query."""

    keyframe_id: int
    score: float
    session: str = ""
    stamp_ns: int = 0
    frame_id: str = ""
    pose: Pose | None = None
    rerank_score: float | None = None


@dataclass
class MapStats:
    keyframes: int
    sessions: list[str]
    current_session: str
    dim: int
    index_type: str
    index_trained: bool
    encoder: dict[str, Any] = field(default_factory=dict)
