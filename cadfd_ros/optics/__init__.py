"""Optics: thin-lens defocus, aperture masks and PSF banks (no torch, no ROS)."""

from cadfd_ros.optics.psf_bank import PSFBank, load_psf_bank, save_psf_bank, default_psf_bank_path
from cadfd_ros.optics.thin_lens import ThinLens, circle_of_confusion_px, render_coded_psf, synthesize_psf_bank

__all__ = [
    "PSFBank",
    "load_psf_bank",
    "save_psf_bank",
    "default_psf_bank_path",
    "ThinLens",
    "circle_of_confusion_px",
    "render_coded_psf",
    "synthesize_psf_bank",
]
