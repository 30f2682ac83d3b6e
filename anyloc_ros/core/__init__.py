"""The ROS-free core library of anyloc_ros.

Nothing under this package imports rclpy: it runs the same inside a ROS node, a CLI tool, a
notebook or a test. Modules: backbones, aggregation, vocabulary, projection, encoder,
config, database, loop_closure, rerank.
"""
