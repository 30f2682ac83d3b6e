"""The fleet's shared place memory, without ROS: what a keyframe looks like on the fleet topic
(wire.py: the compact descriptor, the checks a peer's keyframe must pass), which peers' keyframes
are taken and how many wait (gate.py), what a robot sends of its own map and when (outbox.py),
and the bandwidth and request budgets (budget.py). The nodes wire it to DDS (nodes/fleet.py);
peer keyframes are stored in the map as the peer's sessions (map/database.py `add_peer_keyframes`).
"""
