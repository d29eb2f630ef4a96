"""ROS 2 layer: message conversions (conversions.py) and the lifecycle node helpers."""
