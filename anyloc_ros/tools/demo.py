"""`anyloc demo`: the main job end to end through the real nodes.

1. builds a VLAD vocabulary from the map traversal's images (XFeat ONNX by default);
2. starts the encoder, mapping and recognition nodes as separate processes over DDS
   (loopback only, a private domain id);
3. drives the map traversal (images + odometry), starts a new session through the mapping
   node's service, drives the second traversal, and saves the map through the service;
4. prints what it found: map size, Recall@1/5 of the place matches against the ground
   truth, loop closures (verified, one per revisited stretch), their precision and recall,
   and latency; writes a JSON summary.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import AnyLocError


def _candidates(relative: str) -> list[Path]:
    """Where a file the demo needs may be: the working directory (the README runs from the
    repository root), then the package's installed share directory."""
    from .ros_driver import share_dir

    return [Path.cwd() / relative, share_dir() / relative]


def default_data_dir() -> Path:
    env = os.environ.get("ANYLOC_SHARED_DATA")
    if env:
        return Path(env)
    found = [c for c in _candidates("../shared/data") if c.is_dir()]
    return (found or _candidates("../shared/data"))[0].resolve()


def default_config() -> Path:
    found = [c for c in _candidates("config/encoders/xfeat_vlad.yaml") if c.is_file()]
    if not found:
        raise AnyLocError("config/encoders/xfeat_vlad.yaml not found (neither here nor in the package's share "
                          "directory): run from the repository root or pass --config")
    return found[0]


def run_demo(data: Path, workdir: Path, encoder_config: Path, device: str = "cpu", clusters: int = 32,
             quiet: bool = False) -> dict[str, Any]:
    from ..core.config.encoder import EncoderConfig
    from ..core.config.recognition import LoopClosureConfig
    from ..core.encoding.encoder import build_backbone
    from ..core.encoding.images import load_image
    from ..core.encoding.vocabulary import build_vocabulary
    from ..eval.datasets import load_folder_dataset
    from .ros_driver import DriverNode, NodeProcess, isolated_dds_env, publish_traversal, write_params

    ds = load_folder_dataset(data / "ref", data / "query", data / "ground_truth.csv")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    vocab = workdir / f"vocab_k{clusters}.npz"
    cfg = EncoderConfig.from_yaml(encoder_config)
    cfg.backbone.device = device
    if not vocab.exists():
        print(f"[1/4] building a {clusters}-cluster vocabulary from {len(ds.database)} map images ...", flush=True)
        build_vocabulary(build_backbone(cfg), ds.database, clusters, progress=not quiet).save(vocab)
    else:
        print(f"[1/4] vocabulary: {vocab}", flush=True)
    map_dir = workdir / "map"
    if map_dir.exists():
        import shutil

        shutil.rmtree(map_dir)
    params = write_params(workdir / "params.yaml", {
        "/**": {"map_path": str(map_dir), "pose_source": "odom"},
        "encoder_node": {"encoder_config": str(Path(encoder_config).resolve()), "vocabulary": str(vocab),
                         "device": device, "queue_size": 20, "qos_reliable": True},
        "mapping_node": {"session": "traversal_1"},
        # a repeated route: sequence matching (README) makes the closures exact; verification,
        # min_score and one closure per revisited stretch are the defaults
        "recognition_node": {"exclude_current_session": True, "sequence.enable": True},
    })
    isolated_dds_env()
    print("[2/4] starting encoder_node, mapping_node, recognition_node ...", flush=True)
    names = ("encoder_node", "mapping_node", "recognition_node")
    nodes = [NodeProcess(n, params, workdir) for n in names]
    driver = DriverNode("anyloc_demo_driver")
    try:
        from nav_msgs.msg import Odometry
        from sensor_msgs.msg import Image

        from ..msg import LoopClosure, PlaceMatch
        from ..srv import GetMapInfo, NewSession, SaveMap

        driver.watch(PlaceMatch, "place_matches")
        driver.watch(LoopClosure, "loop_closures")
        img_pub = driver.node.create_publisher(Image, "image", 10)
        odom_pub = driver.node.create_publisher(Odometry, "odom", 100)
        driver.wait_matched(img_pub, 1, 120, nodes)
        driver.wait_matched(odom_pub, 2, 120, nodes)
        driver.wait_graph("descriptors", 1, 2)  # encoder -> mapping + recognition
        refs = [load_image(p) for p in ds.database]
        queries = [load_image(p) for p in ds.queries]
        print(f"[3/4] traversal 1: {len(refs)} images -> map; traversal 2: {len(queries)} images -> recognition",
              flush=True)
        t0 = time.perf_counter()
        publish_traversal(driver, img_pub, odom_pub, refs, 1000, [(i, 0.0) for i in range(len(refs))], 0)
        driver.call(NewSession, "new_session", NewSession.Request(session_id="traversal_2"))
        publish_traversal(driver, img_pub, odom_pub, queries, 5000, [(i, 0.5) for i in range(len(queries))],
                          len(refs))
        elapsed = time.perf_counter() - t0
        saved = driver.call(SaveMap, "save_map", SaveMap.Request())
        info = driver.call(GetMapInfo, "get_map_info", GetMapInfo.Request())
        matches = [m for m in driver.received["place_matches"] if m.query_stamp.sec >= 5000]
        loops = [lc for lc in driver.received["loop_closures"] if lc.query_stamp.sec >= 5000]
    finally:
        for n in nodes:
            n.stop()
        driver.close()
    # map image index from the keyframe's stamp (map traversal stamped 1000 + i s)
    ranked = {m.query_stamp.sec - 5000: [t.sec - 1000 for t in m.keyframe_stamps] for m in matches}
    recall = {k: float(np.mean([bool(set(ranked.get(i, [])[:k]) & ds.positives[i]) for i in range(len(queries))]))
              for k in (1, 5)}
    correct = [lc for lc in loops if (lc.match_stamp.sec - 1000) in ds.positives[lc.query_stamp.sec - 5000]]
    # one closure per revisited stretch: a revisited place counts as recalled when a correct
    # closure links the map within loop.suppress_window keyframes of it (the stretch it suppresses)
    window = LoopClosureConfig().suppress_window  # the demo keeps the default
    linked = [lc.match_stamp.sec - 1000 for lc in correct]
    revisits = [i for i in range(len(queries)) if ds.positives[i]]
    covered = [i for i in revisits if any(min(abs(g - m) for g in ds.positives[i]) <= window for m in linked)]
    summary = {
        "dataset": str(data), "map_keyframes": int(info.keyframes), "sessions": int(info.sessions),
        "map_saved": bool(saved.success), "map_path": str(map_dir), "encoder_id": info.encoder_id,
        "descriptor_dim": int(info.descriptor_dim), "queries": len(queries), "place_matches": len(matches),
        "recall@1": recall[1], "recall@5": recall[5], "loop_closures": len(loops),
        "loop_closure_precision": len(correct) / max(len(loops), 1),
        "loop_closure_recall": len(covered) / max(len(revisits), 1),
        "loop_closures_verified": sum(lc.verified for lc in loops),
        "encode_ms_median": float(np.median([m.encode_latency_ms for m in matches])) if matches else None,
        "frames_per_s": (len(refs) + len(queries)) / elapsed,
    }
    (workdir / "demo_results.json").write_text(json.dumps(summary, indent=2))
    print("[4/4] results")
    print(f"  map: {summary['map_keyframes']} keyframes in {summary['sessions']} sessions, saved to {map_dir}")
    print(f"  place matches: {len(matches)}/{len(queries)} queries, Recall@1 {recall[1]:.3f}, Recall@5 {recall[5]:.3f}")
    print(f"  loop closures: {len(loops)} published ({summary['loop_closures_verified']} geometrically verified), "
          f"precision {summary['loop_closure_precision']:.3f}, recall {summary['loop_closure_recall']:.3f} (revisited "
          f"places within {window} keyframes of a correct closure: one closure per revisited stretch)")
    for lc in loops[:3]:
        print(f"    e.g. frame at t={lc.query_stamp.sec}s (x={lc.query_pose.position.x:.0f} m) revisits keyframe "
              f"{lc.match_id} of {lc.match_session} (x={lc.match_pose.position.x:.0f} m), score {lc.score:.3f}")
    print(f"  encode {summary['encode_ms_median']:.1f} ms/image (median), {summary['frames_per_s']:.1f} frames/s "
          f"through DDS; summary in {workdir / 'demo_results.json'}")
    return summary


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="map then recognise the corridor dataset through the real ROS 2 nodes")
    p.add_argument("--data", default=str(default_data_dir() / "corridor"),
                   help="dataset folder with ref/, query/ and ground_truth.csv")
    p.add_argument("--config", default=None, help="encoder config (default: config/encoders/xfeat_vlad.yaml)")
    p.add_argument("--workdir", default="results/demo")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd)


def _cmd(args: Any) -> int:
    data = Path(args.data)
    if not data.is_dir():
        raise AnyLocError(f"demo data not found: {data} (expected ../shared/data/corridor beside the repository)")
    config = Path(args.config) if args.config else default_config()
    run_demo(data, Path(args.workdir), config, args.device, quiet=args.quiet)
    return 0
