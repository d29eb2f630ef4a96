"""cadfd_ros: single-image depth from defocus with a coded aperture.

The core (``optics``, ``forward``, ``solvers``, ``prior``) has no ROS imports; the ROS 2
node in ``cadfd_ros.node`` is a thin adapter over :mod:`cadfd_ros.pipeline`.
"""

__version__ = "0.1.0"
