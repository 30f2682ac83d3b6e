"""anyloc_ros in localization mode: anyloc.launch.py with mode:=localization (all its arguments apply).

    ros2 launch anyloc_ros localization.launch.py camera_topic:=/camera/image_raw map_path:=/data/maps/lab
"""

from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    full = PathJoinSubstitution([FindPackageShare("anyloc_ros"), "launch", "anyloc.launch.py"])
    return LaunchDescription([
        IncludeLaunchDescription(PythonLaunchDescriptionSource(full), launch_arguments={"mode": "localization"}.items()),
    ])
