"""Command-line tools around the core and the nodes: `anyloc` (cli.py), the demo, rosbag tools,
replay, and the driver that runs the real nodes as processes (ros_driver.py)."""
