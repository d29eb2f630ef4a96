"""Exceptions with messages that name the offending input."""


class CadfdError(Exception):
    """Base class for errors a user can fix (bad file, bad parameter, bad frame)."""


class PSFBankError(CadfdError):
    """A PSF bank file or array breaks the format rules."""


class InputImageError(CadfdError):
    """A capture cannot be used (format, bit depth, size, NaN)."""


class PriorError(CadfdError):
    """A diffusion prior checkpoint cannot be loaded or does not fit."""
