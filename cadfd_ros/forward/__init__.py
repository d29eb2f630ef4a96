"""Image formation: the solver's blur-then-mask operator and the occlusion-aware renderer."""

from cadfd_ros.forward.layers import depth_to_layer_coord, layer_coord_to_depth, soft_layer_weights
from cadfd_ros.forward.operators import LayeredBlur
from cadfd_ros.forward.render import render_occlusion_aware

__all__ = [
    "LayeredBlur",
    "soft_layer_weights",
    "depth_to_layer_coord",
    "layer_coord_to_depth",
    "render_occlusion_aware",
]
