"""`anyloc map info DIR` and `anyloc map check DIR`: a saved map, offline (core/map/check.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def cmd_map(args: argparse.Namespace) -> int:
    from ..core.map.check import inspect_map

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
    p.add_argument("action", choices=("info", "check"),
                   help="info: keyframes, sessions, cameras, encoder, index, size, damaged rows; check: verify every "
                        "row and the index against the rows (exit 1 on damage)")
    p.add_argument("map", help="map directory")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=cmd_map)
