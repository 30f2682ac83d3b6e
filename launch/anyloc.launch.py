"""anyloc_ros: camera in, place matches and loop-closure candidates out.

    ros2 launch anyloc_ros anyloc.launch.py camera_topic:=/camera/image_raw odom_topic:=/odom \
        params_file:=/path/to/anyloc.yaml map_path:=/data/maps/lab
    ros2 launch anyloc_ros anyloc.launch.py camera_topics:=/front/image_raw,/rear/image_raw ...
    ros2 launch anyloc_ros anyloc.launch.py camera_topic:=/camera/color/image_raw \
        camera_info_topic:=/camera/color/camera_info depth_topic:=/camera/aligned_depth_to_color/image_raw \
        params_file:=rgbd.yaml    # an RGB-D camera (depth.enable: true): metric loop closures

Several cameras (camera_topics): one encoder per camera (namespaced cam0, cam1, ..., each
configured by the params file's encoder_node section) publishing into the one `descriptors`
topic; the map records each keyframe's camera (the image frame_id), keyframes are gated per
camera, and place matches say which camera saw the query and each match.

mode: full (map while recognising), mapping, localization (recognise against a saved map).

A fleet (README "Fleet"): each robot's nodes in its namespace with its robot_id, sharing
keyframes on the fleet topic (outside the namespaces):

    ros2 launch anyloc_ros anyloc.launch.py namespace:=robot_a robot_id:=robot_a fleet:=true \
        camera_topic:=/robot_a/camera/image_raw odom_topic:=/robot_a/odom map_path:=/data/maps/robot_a
use_composition:=true runs the nodes in one process (anyloc_pipeline): images are not
serialised between encoder, mapping and recognition.

map_path: given, it wins over the params file; not given, the params file's map_path, else the
nodes' one default (~/.ros/anyloc/map, config/nodes.py).

Launch arguments win over the params file: they are passed as a parameter file after it,
under each node's own name (ros_arguments `-p` would come before `--params-file` and lose; a
`/**` section would lose against a node's section of the user's file, which rcl applies later). A node that exits with an
error (bad parameters, missing weights) ends the whole launch with its message above, unless
respawn:=true asks for it to be restarted.
"""

import tempfile

import yaml
from launch.actions import DeclareLaunchArgument, EmitEvent, LogInfo, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition, UnlessCondition
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    mode = LaunchConfiguration("mode")
    composed = LaunchConfiguration("use_composition")
    camera = LaunchConfiguration("camera_topic")
    odom = LaunchConfiguration("odom_topic")
    params = LaunchConfiguration("params_file")
    respawn = LaunchConfiguration("respawn")
    cameras = LaunchConfiguration("camera_topics")

    def when(modes: str, composition: str, *also: object) -> IfCondition:
        return IfCondition(PythonExpression(["'", mode, "' in ", modes, " and '", composed, "' == '", composition, "'",
                                             *also]))

    def params_file_after_the_users(sections: dict) -> str:
        """Parameters for named nodes (`/**/name`) in a file passed after the user's params file."""
        with tempfile.NamedTemporaryFile("w", prefix="anyloc_launch_", suffix=".yaml", delete=False) as f:
            yaml.safe_dump({k: {"ros__parameters": v} for k, v in sections.items()}, f)
        return f.name

    camera_remaps = [("image", camera), ("image/compressed", [camera, "/compressed"]),
                     ("camera_info", LaunchConfiguration("camera_info_topic")),
                     ("depth", LaunchConfiguration("depth_topic"))]

    def node(**kw) -> Node:
        return Node(package="anyloc_ros", output="screen", respawn=respawn, respawn_delay=2.0, **kw)

    namespace = LaunchConfiguration("namespace")

    def fleet_overrides(context) -> dict:
        """robot_id and fleet sharing from the launch arguments (win over the params file)."""
        out = {}
        robot = LaunchConfiguration("robot_id").perform(context)
        if robot:
            out["robot_id"] = robot
        if LaunchConfiguration("fleet").perform(context) == "true":
            out["fleet.enable"] = True
        return out

    def separate_nodes(context):
        """Encoder (one camera), mapping and recognition as the mode asks, each its own process."""
        chosen, cams = mode.perform(context), cameras.perform(context).strip()
        if composed.perform(context) == "true":
            return []
        given = LaunchConfiguration("map_path").perform(context)
        overrides = [{"map_path": given}] if given else []  # else the params file's, else the nodes' default
        fleet = fleet_overrides(context)
        ns = namespace.perform(context)
        overrides += [fleet] if fleet else []
        nodes = []
        if not cams:
            nodes.append(node(executable="encoder_node", name="encoder_node", namespace=ns, parameters=[params],
                              remappings=camera_remaps))
        if chosen in ("full", "mapping"):
            nodes.append(node(executable="mapping_node", name="mapping_node", namespace=ns,
                              parameters=[params, *overrides], remappings=[("odom", odom)]))
        if chosen in ("full", "localization"):
            nodes.append(node(executable="recognition_node", name="recognition_node", namespace=ns,
                              parameters=[params, *overrides], remappings=[("odom", odom)]))
        return [action for n in nodes for action in (n, failure_handler(n))]

    def end_on_failure(event, context):
        if event.returncode in (0, None):
            return []
        name = event.action.name
        return [LogInfo(msg=f"[anyloc_ros] {name} exited with code {event.returncode} (its error is above): "
                            "ending the launch (respawn:=true restarts it instead)"),
                EmitEvent(event=Shutdown(reason=f"{name} failed (exit code {event.returncode})"))]

    def failure_handler(target: Node) -> RegisterEventHandler:
        return RegisterEventHandler(OnProcessExit(target_action=target, on_exit=end_on_failure),
                                    condition=UnlessCondition(respawn))

    def pipeline(context):
        # No `name` here: a node-name remap would rename all three nodes of the process. The
        # launch arguments go to each node of the process by name, in a file after the user's.
        map_path = LaunchConfiguration("map_path").perform(context)
        given = ({"map_path": map_path} if map_path else {}) | fleet_overrides(context)
        sections = {"/**/anyloc_pipeline": {"mode": mode.perform(context)},
                    **({f"/**/{n}": dict(given) for n in ("mapping_node", "recognition_node")} if given else {})}
        composed_node = node(executable="anyloc_pipeline", namespace=namespace.perform(context),
                             parameters=[params, params_file_after_the_users(sections)],
                             remappings=camera_remaps + [("odom", odom)])
        return [composed_node, failure_handler(composed_node)]

    def camera_encoders(context):
        """One encoder per camera topic, all into the one `descriptors` topic (and one map)."""
        topics = [t.strip() for t in cameras.perform(context).split(",") if t.strip()]
        if not topics or composed.perform(context) == "true":
            return []
        user = yaml.safe_load(open(params.perform(context), encoding="utf-8")) or {}
        encoder = {}
        for key, section in user.items():  # the encoder_node section, for every camera's encoder
            if str(key).rstrip("/").rsplit("/", 1)[-1] == "encoder_node" and isinstance(section, dict):
                encoder.update(section.get("ros__parameters") or {})
        encoder_params = params_file_after_the_users({"/**/encoder_node": encoder})
        actions = []
        ns = namespace.perform(context).strip("/")
        base = f"/{ns}" if ns else ""
        for i, topic in enumerate(topics):
            n = node(executable="encoder_node", name="encoder_node", namespace=f"{base}/cam{i}",
                     parameters=[params, encoder_params],
                     remappings=[("image", topic), ("image/compressed", topic + "/compressed"),
                                 ("descriptors", f"{base}/descriptors"), ("encoder_info", f"{base}/encoder_info")])
            actions += [n, failure_handler(n)]
        return actions

    return LaunchDescription([
        DeclareLaunchArgument("mode", default_value="full", choices=["full", "mapping", "localization"],
                              description="full: map and recognise; mapping; localization: saved map only"),
        DeclareLaunchArgument("use_composition", default_value="false", choices=["true", "false"],
                              description="run all nodes in one process (anyloc_pipeline)"),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic (its /compressed sibling with image_transport: "
                                          "compressed)"),
        DeclareLaunchArgument("camera_topics", default_value="",
                              description="several cameras: comma-separated image topics, one encoder each "
                                          "(instead of camera_topic; not with use_composition)"),
        DeclareLaunchArgument("camera_info_topic", default_value="/camera/camera_info",
                              description="sensor_msgs/CameraInfo of camera_topic (intrinsics and distortion, unless "
                                          "the params file sets camera.fx ...)"),
        DeclareLaunchArgument("depth_topic", default_value="/camera/aligned_depth_to_color/image_raw",
                              description="depth registered to camera_topic (16UC1 mm / 32FC1 m), used with the "
                                          "params file's depth.enable: true (metric loop closures)"),
        DeclareLaunchArgument("odom_topic", default_value="/odom", description="nav_msgs/Odometry topic"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([FindPackageShare("anyloc_ros"), "config",
                                                                  "anyloc.yaml"]),
                              description="ROS 2 params file for the anyloc_ros nodes"),
        DeclareLaunchArgument("map_path", default_value="",
                              description="map directory (wins over the params file; empty: the params file's, "
                                          "else ~/.ros/anyloc/map)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="the robot's namespace for all nodes (a fleet: one per robot)"),
        DeclareLaunchArgument("robot_id", default_value="",
                              description="this robot's id (wins over the params file): in loop closures, the map "
                                          "and, with fleet, its keyframes on the fleet topic"),
        DeclareLaunchArgument("fleet", default_value="false", choices=["true", "false"],
                              description="share keyframes with the fleet and take the peers' (fleet.enable; needs "
                                          "robot_id)"),
        DeclareLaunchArgument("respawn", default_value="false", choices=["true", "false"],
                              description="restart a node that exits (else a failing node ends the launch)"),
        OpaqueFunction(function=separate_nodes),
        OpaqueFunction(function=pipeline, condition=when("('full', 'mapping', 'localization')", "true")),
        OpaqueFunction(function=camera_encoders),
    ])
