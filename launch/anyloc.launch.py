"""anyloc_ros: camera in, place matches and loop-closure candidates out.

    ros2 launch anyloc_ros anyloc.launch.py camera_topic:=/camera/image_raw odom_topic:=/odom \
        params_file:=/path/to/anyloc.yaml map_path:=/data/maps/lab

mode: full (map while recognising), mapping, localization (recognise against a saved map).
use_composition:=true runs the nodes in one process (anyloc_pipeline): images are not
serialised between encoder, mapping and recognition.
"""

from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
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
    overrides = {"map_path": LaunchConfiguration("map_path")}

    def when(modes: str, composition: str) -> IfCondition:
        return IfCondition(PythonExpression(["'", mode, "' in ", modes, " and '", composed, "' == '", composition, "'"]))

    camera_remaps = [("image", camera), ("image/compressed", [camera, "/compressed"])]
    return LaunchDescription([
        DeclareLaunchArgument("mode", default_value="full", choices=["full", "mapping", "localization"],
                              description="full: map and recognise; mapping; localization: saved map only"),
        DeclareLaunchArgument("use_composition", default_value="false", choices=["true", "false"],
                              description="run all nodes in one process (anyloc_pipeline)"),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic (its /compressed sibling with image_transport: "
                                          "compressed)"),
        DeclareLaunchArgument("odom_topic", default_value="/odom", description="nav_msgs/Odometry topic"),
        DeclareLaunchArgument("params_file",
                              default_value=PathJoinSubstitution([FindPackageShare("anyloc_ros"), "config",
                                                                  "anyloc.yaml"]),
                              description="ROS 2 params file for the anyloc_ros nodes"),
        DeclareLaunchArgument("map_path", default_value="~/.ros/anyloc/map", description="map directory"),
        Node(package="anyloc_ros", executable="encoder_node", name="encoder_node", output="screen",
             parameters=[params], remappings=camera_remaps,
             condition=when("('full', 'mapping', 'localization')", "false")),
        Node(package="anyloc_ros", executable="mapping_node", name="mapping_node", output="screen",
             parameters=[params, overrides], remappings=[("odom", odom)],
             condition=when("('full', 'mapping')", "false")),
        Node(package="anyloc_ros", executable="recognition_node", name="recognition_node", output="screen",
             parameters=[params, overrides], remappings=[("odom", odom)],
             condition=when("('full', 'localization')", "false")),
        # No `name` here: a node-name remap would rename all three nodes of the process. `-p`
        # overrides apply to every node in it.
        Node(package="anyloc_ros", executable="anyloc_pipeline", output="screen",
             parameters=[params], remappings=camera_remaps + [("odom", odom)],
             ros_arguments=["-p", ["map_path:=", LaunchConfiguration("map_path")], "-p", ["mode:=", mode]],
             condition=when("('full', 'mapping', 'localization')", "true")),
    ])
