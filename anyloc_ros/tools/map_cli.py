"""`anyloc map info DIR`, `anyloc map check DIR` (core/map/check.py) and `anyloc map merge A B ...
OUT` (core/map/merge.py): saved maps, offline."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def cmd_merge(args: argparse.Namespace) -> int:
    from ..core.errors import MapError
    from ..core.map.merge import merge_maps

    if len(args.maps) < 3:
        raise SystemExit("anyloc map merge: give at least two maps and the output directory (A B OUT)")
    try:
        report = merge_maps(args.maps[:-1], args.maps[-1])
    except MapError as exc:
        print(f"anyloc map merge: {exc}", file=sys.stderr)
        return 1
    robots = ", ".join(f"{r} {n}" for r, n in sorted(report.robots.items())) or "none new"
    print(f"merged into {report.output}: {report.keyframes} keyframes added ({robots}), {report.already_held} "
          "already held")
    return 0


def cmd_map(args: argparse.Namespace) -> int:
    from ..core.map.check import inspect_map

    if args.action == "merge":
        return cmd_merge(args)
    if len(args.maps) != 1:
        raise SystemExit(f"anyloc map {args.action}: give one map directory")
    args.map = args.maps[0]
    full = args.action == "check"
    report = inspect_map(args.map, full=full)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"map {report.path}: {report.keyframes} keyframes, {len(report.sessions)} sessions "
              f"({', '.join(report.sessions[-5:])}{', ...' if len(report.sessions) > 5 else ''}), "
              f"cameras {', '.join(repr(c) for c in report.cameras) or '-'}")
        print(f"  encoder {report.encoder_id}, {report.dim}-D descriptors, {report.index_type} index, "
              f"{report.bytes_on_disk / 2**20:.1f} MiB on disk")
        if report.robot_id or report.peer_keyframes:
            print(f"  robot {report.robot_id or '(not recorded)'}; {report.peer_keyframes} keyframes of other robots "
                  f"({', '.join(report.robots) or '-'})")
        if not report.checksummed:
            print("  written before row checksums: rows are checked once the mapping node has opened it")
        for kid, part in sorted(report.damaged.items()):
            print(f"  DAMAGED keyframe {kid}: its {part} fail their checksum (quarantined: never returned)")
        for problem in report.index_problems:
            print(f"  INDEX: {problem}")
        what = "every row and the index" if full else "poses and descriptors"
        print(f"  {what}: {'intact' if report.ok else 'DAMAGED (restore the map from a backup, or keep using it: '}"
              + ("" if report.ok else "damaged keyframes are left out)"))
    return 0 if report.ok or not full else 1


def register(sub: Any) -> None:
    p = sub.add_parser("map", help="a saved map, offline: what it holds (info) or whether it is intact (check)")
    p.add_argument("action", choices=("info", "check", "merge"),
                   help="info: keyframes, sessions, cameras, encoder, index, size, damaged rows; check: verify every "
                        "row and the index against the rows (exit 1 on damage); merge A B ... OUT: the maps of "
                        "several robots into one (same encoder; sessions and robot ids kept)")
    p.add_argument("maps", nargs="+", metavar="map", help="map directory (merge: the maps, then the output)")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=cmd_map)
