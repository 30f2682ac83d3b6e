"""rosbag2 files: `anyloc make-bag` (images + trajectory -> bag) and reading a bag's camera and
odometry messages (for `anyloc replay`, tools/replay.py).

Bags are written and read with the `rosbags` library (sqlite3 or mcap storage, rosbag2
metadata version 9).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.encoding.images import list_images
from ..core.errors import AnyLocError
from .arg_types import positive_float

log = logging.getLogger(__name__)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
ODOM_TYPES = ("nav_msgs/msg/Odometry", "geometry_msgs/msg/PoseStamped")
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
DEPTH_TYPE = "depth:sensor_msgs/msg/Image"  # BagMessage.msgtype of the depth topic's images (not colour frames)


def camera_info_topic_of(image_topic: str) -> str:
    """The CameraInfo topic beside an image topic, as image_transport names it
    (/camera/image_raw -> /camera/camera_info)."""
    return image_topic.rsplit("/", 1)[0] + "/camera_info"


class BagError(AnyLocError, ValueError):
    """A bag cannot be written or read, or lacks the requested topics."""


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def make_bag(images: str | Path, output: str | Path, trajectory: str | Path | None = None, storage: str = "sqlite3",
             compressed: bool = False, image_topic: str = "/camera/image_raw", odom_topic: str = "/odom",
             fps: float = 10.0, frame_id: str = "camera", progress: bool = True,
             camera: tuple[float, float, float, float] | None = None, distortion: list[float] | None = None,
             depth: str | Path | None = None, depth_scale: float = 1000.0,
             depth_topic: str = "/camera/aligned_depth_to_color/image_raw") -> dict[str, Any]:
    """Write a rosbag2 bag: one Image (or CompressedImage) per image file, stamped by the file
    name when it is a timestamp (TUM) else at `fps`; with a TUM trajectory, every pose within
    the images' time span as nav_msgs/Odometry; with `camera` (fx, fy, cx, cy) and optional
    plumb_bob `distortion`, a CameraInfo beside each image (on the image topic's camera_info, as
    a camera driver publishes it); with `depth`, a folder of 16-bit depth images registered to the
    colour images (`depth_scale` units per metre: 1000 for millimetres, 5000 for TUM), one
    16UC1 Image in millimetres (REP 118) each on `depth_topic`, stamped by its file name when it
    is a timestamp (TUM: its own capture time) else as its colour image."""
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer
    from tqdm import tqdm

    from ..eval.datasets import DatasetError, image_stamp, read_tum_trajectory

    paths = list_images(images)
    if distortion is not None and (camera is None or len(distortion) not in (4, 5, 8) or not all(np.isfinite(distortion))):
        raise BagError(f"distortion needs --camera and 4, 5 or 8 finite plumb_bob / rational coefficients, got "
                       f"{distortion}")
    if not (np.isfinite(depth_scale) and depth_scale > 0):
        raise BagError(f"depth scale must be a positive number of units per metre, got {depth_scale}")
    output = Path(output)
    if output.exists():
        raise BagError(f"output {output} exists; rosbag2 writes a new directory")
    if storage not in ("sqlite3", "mcap"):
        raise BagError(f"storage must be sqlite3 or mcap, got {storage!r}")
    if camera is not None and (len(camera) != 4 or not all(np.isfinite(camera)) or min(camera[:2]) <= 0):
        raise BagError(f"camera intrinsics are fx fy cx cy with fx, fy > 0, got {list(camera)}")
    try:
        stamps = [image_stamp(p) for p in paths]
    except DatasetError:
        if trajectory:
            raise
        stamps = [i / fps for i in range(len(paths))]
    ts = _typestore()
    Image, CompressedImage = ts.types["sensor_msgs/msg/Image"], ts.types["sensor_msgs/msg/CompressedImage"]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    Odometry = ts.types["nav_msgs/msg/Odometry"]
    gm = {n: ts.types[f"geometry_msgs/msg/{n}"] for n in ("Point", "Quaternion", "Pose", "PoseWithCovariance",
                                                          "Twist", "Vector3", "TwistWithCovariance")}

    def header(t: float, frame: str):
        ns = int(round(t * 1e9))
        return Header(stamp=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000), frame_id=frame), ns

    info_topic = camera_info_topic_of(image_topic)

    def camera_info(h, width: int, height: int):
        fx, fy, cx, cy = (float(v) for v in camera)
        CameraInfo, RegionOfInterest = ts.types[CAMERA_INFO_TYPE], ts.types["sensor_msgs/msg/RegionOfInterest"]
        d = np.asarray(distortion if distortion is not None else np.zeros(5), np.float64)
        return CameraInfo(header=h, height=height, width=width,
                          distortion_model="rational_polynomial" if len(d) == 8 else "plumb_bob", d=d,
                          k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1], np.float64), r=np.eye(3).ravel(),
                          p=np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], np.float64), binning_x=0,
                          binning_y=0, roi=RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0,
                                                            do_rectify=False))

    events: list[tuple[int, str, bytes]] = []
    if trajectory:
        t_traj, poses = read_tum_trajectory(trajectory)
        keep = (t_traj >= min(stamps) - 0.5) & (t_traj <= max(stamps) + 0.5)
        zero3 = gm["Vector3"](x=0.0, y=0.0, z=0.0)
        for t, p in zip(t_traj[keep], poses[keep], strict=True):
            h, ns = header(float(t), "odom")
            pose = gm["Pose"](position=gm["Point"](x=p[0], y=p[1], z=p[2]),
                              orientation=gm["Quaternion"](x=p[3], y=p[4], z=p[5], w=p[6]))
            msg = Odometry(header=h, child_frame_id=frame_id,
                           pose=gm["PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
                           twist=gm["TwistWithCovariance"](twist=gm["Twist"](linear=zero3, angular=zero3),
                                                           covariance=np.zeros(36)))
            events.append((ns, odom_topic, ts.serialize_cdr(msg, "nav_msgs/msg/Odometry")))
    img_type = IMAGE_TYPES[1] if compressed else IMAGE_TYPES[0]
    for p, t in tqdm(list(zip(paths, stamps, strict=True)), desc="images", unit="img", disable=not progress):
        h, ns = header(t, frame_id)
        if compressed:
            data = np.frombuffer(p.read_bytes(), np.uint8)
            msg = CompressedImage(header=h, format="png" if p.suffix.lower() == ".png" else "jpeg", data=data)
            pixels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if camera is not None else None  # its size only
            if camera is not None and pixels is None:
                raise BagError(f"cannot read image {p}")
        else:
            pixels = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if pixels is None:
                raise BagError(f"cannot read image {p}")
            msg = Image(header=h, height=pixels.shape[0], width=pixels.shape[1], encoding="bgr8", is_bigendian=0,
                        step=pixels.shape[1] * 3, data=pixels.reshape(-1))
        if camera is not None:  # ahead of its image, as a driver latches it
            height, width = pixels.shape[:2]
            events.append((ns, info_topic, ts.serialize_cdr(camera_info(h, width, height), CAMERA_INFO_TYPE)))
        events.append((ns, image_topic, ts.serialize_cdr(msg, img_type)))
    depth_count = 0
    if depth is not None:
        depth_paths = list_images(depth)
        try:
            depth_stamps = [image_stamp(p) for p in depth_paths]
        except DatasetError:
            if len(depth_paths) != len(paths):
                raise BagError(f"{len(depth_paths)} depth images for {len(paths)} colour images (name them by their "
                               "timestamps, or give one per colour image)") from None
            depth_stamps = stamps
        for p, t in tqdm(list(zip(depth_paths, depth_stamps, strict=True)), desc="depth", unit="img",
                         disable=not progress):
            raw = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            if raw is None or raw.ndim != 2 or raw.dtype != np.uint16:
                raise BagError(f"{p} is not a 16-bit single-channel depth image")
            mm = np.round(raw.astype(np.float64) * (1000.0 / depth_scale))
            mm = np.clip(mm, 0, 65535).astype(np.uint16)
            h, ns = header(t, frame_id)
            msg = Image(header=h, height=mm.shape[0], width=mm.shape[1], encoding="16UC1", is_bigendian=0,
                        step=mm.shape[1] * 2, data=mm.reshape(-1).view(np.uint8))
            events.append((ns, depth_topic, ts.serialize_cdr(msg, IMAGE_TYPES[0])))
            depth_count += 1
    events.sort(key=lambda e: e[0])
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(output, version=9, storage_plugin=plugin) as writer:
        conns = {image_topic: writer.add_connection(image_topic, img_type, typestore=ts)}
        if trajectory:
            conns[odom_topic] = writer.add_connection(odom_topic, "nav_msgs/msg/Odometry", typestore=ts)
        if camera is not None:
            conns[info_topic] = writer.add_connection(info_topic, CAMERA_INFO_TYPE, typestore=ts)
        if depth_count:
            conns[depth_topic] = writer.add_connection(depth_topic, IMAGE_TYPES[0], typestore=ts)
        for ns, topic, data in events:
            writer.write(conns[topic], ns, data)
    counts = {image_topic: len(paths), **({odom_topic: int(sum(1 for e in events if e[1] == odom_topic))}
                                         if trajectory else {}), **({info_topic: len(paths)} if camera else {}),
              **({depth_topic: depth_count} if depth_count else {})}
    return {"bag": str(output), "storage": storage, "messages": counts, "image_type": img_type}


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    stamp_ns: int  # bag receive time
    raw: bytes
    msg: Any = None


def read_bag(path: str | Path, image_topic: str | None = None, odom_topic: str | None = None,
             camera_info_topic: str | None = None, depth_topic: str | None = None) -> Iterator[BagMessage]:
    """Camera, camera_info, depth and odometry messages of a bag in time order (topics
    auto-detected by type; the camera_info beside the image topic, else the bag's only one; the
    depth: an Image topic named "depth" other than the image topic). Depth messages come with
    msgtype DEPTH_TYPE, so callers tell them from the colour images."""
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    ts = _typestore()
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:
        raise BagError(f"cannot open bag {path}: {exc}") from exc
    try:
        topics = {c.topic: c.msgtype for c in reader.connections}
        if depth_topic is None:
            depth_topic = next((t for t, m in topics.items() if m == IMAGE_TYPES[0] and "depth" in t
                                and t != image_topic), None)
        elif topics.get(depth_topic) != IMAGE_TYPES[0]:
            raise BagError(f"bag {path} has no depth image topic {depth_topic} (topics: {topics})")
        image_topic = image_topic or next((t for t, m in topics.items() if m in IMAGE_TYPES and t != depth_topic), None)
        if image_topic is None or topics.get(image_topic) not in IMAGE_TYPES:
            raise BagError(f"bag {path} has no image topic {image_topic or ''} (topics: {topics})")
        if odom_topic is None:
            odom_topic = next((t for t, m in topics.items() if m in ODOM_TYPES), None)
        elif topics.get(odom_topic) not in ODOM_TYPES:
            raise BagError(f"bag {path} has no odometry topic {odom_topic} (topics: {topics})")
        infos = [t for t, m in topics.items() if m == CAMERA_INFO_TYPE]
        if camera_info_topic is None:
            beside = camera_info_topic_of(image_topic)
            camera_info_topic = beside if beside in infos else (infos[0] if len(infos) == 1 else None)
        elif topics.get(camera_info_topic) != CAMERA_INFO_TYPE:
            raise BagError(f"bag {path} has no camera_info topic {camera_info_topic} (topics: {topics})")
        conns = [c for c in reader.connections if c.topic in (image_topic, odom_topic, camera_info_topic, depth_topic)]
        for conn, stamp, raw in reader.messages(connections=conns):
            kind = DEPTH_TYPE if conn.topic == depth_topic else conn.msgtype
            yield BagMessage(conn.topic, kind, stamp, bytes(raw), ts.deserialize_cdr(raw, conn.msgtype))
    finally:
        reader.close()


def bag_poses(messages: list[BagMessage], skip: Callable[[str, Exception], None] | None = None) -> Any:
    """All odometry of a bag in one PoseBuffer (the nodes wait for the pose covering each image).
    Invalid poses (non-unit quaternions, NaN) are skipped and counted, as the nodes do."""
    from ..core.errors import AnyLocError
    from ..core.pose_buffer import PoseBuffer

    buf = PoseBuffer(max_age_s=1e9)
    for m in messages:
        if m.msgtype in ODOM_TYPES:
            try:
                buf.add(*_pose_of(m))
            except AnyLocError as exc:
                if skip is not None:
                    skip("poses", exc)
    return buf


def _pose_of(m: BagMessage):
    from ..nodes.conversions import pose_from_msg, stamp_to_ns

    p = m.msg.pose.pose if m.msgtype == ODOM_TYPES[0] else m.msg.pose
    return stamp_to_ns(m.msg.header.stamp), pose_from_msg(p)


def register(sub: Any) -> None:
    p = sub.add_parser("make-bag", help="write a rosbag2 bag from an image folder (+ TUM trajectory)")
    p.add_argument("--images", required=True)
    p.add_argument("--trajectory", help="TUM trajectory (timestamp tx ty tz qx qy qz qw) -> nav_msgs/Odometry")
    p.add_argument("--output", required=True)
    p.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    p.add_argument("--compressed", action="store_true", help="CompressedImage instead of Image")
    p.add_argument("--image-topic", default="/camera/image_raw")
    p.add_argument("--odom-topic", default="/odom")
    p.add_argument("--fps", type=positive_float, default=10.0, help="frame rate when file names are not timestamps")
    p.add_argument("--camera", nargs=4, type=float, metavar=("FX", "FY", "CX", "CY"),
                   help="write a sensor_msgs/CameraInfo with these intrinsics beside each image")
    p.add_argument("--distortion", nargs="+", type=float, metavar="K",
                   help="the CameraInfo's distortion: k1 k2 p1 p2 k3 (plumb_bob) or 8 (rational_polynomial)")
    p.add_argument("--depth", help="folder of 16-bit depth images registered to the colour images -> 16UC1 "
                   "(millimetres) on --depth-topic")
    p.add_argument("--depth-scale", type=positive_float, default=1000.0,
                   help="depth image units per metre (1000: millimetres; TUM RGB-D: 5000)")
    p.add_argument("--depth-topic", default="/camera/aligned_depth_to_color/image_raw")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_make_bag)


def _cmd_make_bag(args: Any) -> int:
    info = make_bag(args.images, args.output, args.trajectory, args.storage, args.compressed, args.image_topic,
                    args.odom_topic, args.fps, progress=not args.quiet, camera=args.camera,
                    distortion=args.distortion, depth=args.depth, depth_scale=args.depth_scale,
                    depth_topic=args.depth_topic)
    print(f"wrote {info['bag']} ({info['storage']}): " + ", ".join(f"{t}: {n}" for t, n in info["messages"].items()))
    return 0
