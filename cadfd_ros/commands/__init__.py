"""Sub-commands of the ``cadfd`` CLI, one module each (see cadfd_ros/cli.py)."""
