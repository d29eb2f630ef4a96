"""PSF calibration from photos of the target (METHOD.md, Calibration; no ROS, no torch).

Per capture at a known distance d:

1. **Register** the target from its five dots (``cv2.SimpleBlobDetector``, sub-pixel
   intensity centroids, ``cv2.findHomography``). A blurred dot's centroid moves by the PSF's own
   centroid, equally for every dot, so that shift ends up in the PSF estimate.
2. **Warp** the sRGB-decoded target into the capture's geometry (area pre-filter, then
   ``cv2.warpPerspective``) and keep the pixels whose whole PSF footprint sees the target.
3. **Photometry**: ``y = g (k * x) + o``. Since the PSF sums to 1, heavily low-passed ``y``
   against low-passed ``x`` gives the gain g and offset o; they are refined after the PSF solve.
4. **PSF** by regularised least squares, ``min ||V (k*x - z)||^2 / n + lambda var(x) ||grad k||^2``
   over the probability simplex (k >= 0, sum 1): FISTA with an exact Euclidean projection,
   FFT convolutions. Optionally the registration is refined jointly: the rendered prediction is
   aligned to the capture by ECC (``cv2.findTransformECC``) and the PSF solved again.

Then the thin-lens fit over all captures: signed blur ``c(d) = a + b/d`` (pixels; negative in
front of focus, where the PSF is the pattern rotated by 180 deg), an aperture pattern (the
calibrated PSFs rescaled to a common grid, unrotated, averaged) and a small blur ``sigma0``
that does not scale with defocus (diffraction, pixel crosstalk). The pattern's support square
is the aperture (that fixes the scale of c, and where the PSF's centre is). The bank's layers,
evenly spaced in inverse depth, are rendered from the fit.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from cadfd_ros.optics.psf_bank import PSFBank
from cadfd_ros.optics.target import CalibrationError, TargetLayout
from cadfd_ros.optics.thin_lens import layer_depths, render_coded_psf

MIN_DISTANCES = 3
DEFAULT_REG = 0.02
MAX_DISTANCE_M = 100.0  # a printed target farther than this cannot be registered: such a number is a unit slip
MAX_CLIPPED = 0.01  # share of the target's pixels at the sensor's maximum above which a photo is refused
MIN_EXPLAINED = 0.5  # a photo whose variance the registered target's prediction explains less than this is refused
MIN_MODEL_CORRELATION = 0.9  # a PSF the fitted thin-lens model matches less well than this is warned about


# ----------------------------------------------------------------------------- registration
def _to_u8(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (0.5, 99.5))
    scale = 255.0 / max(hi - lo, 1e-9)
    return np.clip((image - lo) * scale, 0, 255).astype(np.uint8)


def detect_dots(capture: np.ndarray, max_dots: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Dark, round, large blobs -> ((n, 2) centres (x, y), (n,) diameters), largest first."""
    import cv2

    h, w = capture.shape
    params = cv2.SimpleBlobDetector_Params()
    params.filterByColor = True
    params.blobColor = 0
    params.minThreshold, params.maxThreshold, params.thresholdStep = 20, 160, 10
    params.minRepeatability = 2
    params.filterByArea = True
    params.minArea = math.pi * (0.015 * min(h, w)) ** 2
    params.maxArea = 0.1 * h * w
    params.filterByCircularity = True
    params.minCircularity = 0.6
    params.filterByInertia = True
    params.minInertiaRatio = 0.4
    params.filterByConvexity = True
    params.minConvexity = 0.8
    params.minDistBetweenBlobs = 0.02 * min(h, w)
    keypoints = cv2.SimpleBlobDetector_create(params).detect(_to_u8(capture))
    keypoints = sorted(keypoints, key=lambda k: -k.size)[:max_dots]
    centres = np.array([k.pt for k in keypoints], dtype=np.float64).reshape(-1, 2)
    sizes = np.array([k.size for k in keypoints], dtype=np.float64)
    return centres, sizes


def refine_dot_centre(capture: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Intensity-weighted centroid of the dot's darkness within ``radius`` (sub-pixel)."""
    h, w = capture.shape
    x0, y0 = centre
    r = int(math.ceil(radius))
    xa, xb = max(0, int(x0) - r), min(w, int(x0) + r + 2)
    ya, yb = max(0, int(y0) - r), min(h, int(y0) + r + 2)
    patch = capture[ya:yb, xa:xb]
    yy, xx = np.mgrid[ya:yb, xa:xb]
    inside = (xx - x0) ** 2 + (yy - y0) ** 2 <= radius ** 2
    if inside.sum() < 8:
        return np.asarray(centre, np.float64)
    white = np.percentile(patch[inside], 95)
    weight = np.clip(white - patch, 0, None) * inside
    if weight.sum() <= 0:
        return np.asarray(centre, np.float64)
    return np.array([(weight * xx).sum() / weight.sum(), (weight * yy).sum() / weight.sum()])


def _plausible(H: np.ndarray, layout: TargetLayout) -> bool:
    """Orientation-preserving over the whole target, no horizon inside it (rules out the bowtie
    and mirror solutions that five points alone can fit)."""
    corners = np.array([[0, 0], [layout.width, 0], [layout.width, layout.height], [0, layout.height],
                        [layout.width / 2, layout.height / 2]], np.float64)
    w = H[2, 0] * corners[:, 0] + H[2, 1] * corners[:, 1] + H[2, 2]
    if not (np.all(w > 0) or np.all(w < 0)):
        return False
    for x, y in corners:
        jac = _jacobian(H, x, y)
        if np.linalg.det(jac) <= 0:
            return False
    return True


def _jacobian(H: np.ndarray, x: float, y: float) -> np.ndarray:
    p = H @ np.array([x, y, 1.0])
    w = p[2]
    return np.array([[H[0, 0] * w - p[0] * H[2, 0], H[0, 1] * w - p[0] * H[2, 1]],
                     [H[1, 0] * w - p[1] * H[2, 0], H[1, 1] * w - p[1] * H[2, 1]]]) / w**2


def _match_dots(detected: np.ndarray, layout: TargetLayout) -> tuple[np.ndarray, np.ndarray, float]:
    """The assignment of detected dots to the layout's dots with the smallest homography
    reprojection error (the fifth dot breaks every symmetry) -> (H, ordered points, rms px)."""
    import cv2

    best = None
    target = layout.dots.astype(np.float32)
    for combo in itertools.combinations(range(len(detected)), len(target)):
        for perm in itertools.permutations(combo):
            points = detected[list(perm)].astype(np.float32)
            H, _ = cv2.findHomography(target, points, 0)
            if H is None or not _plausible(H, layout):
                continue
            projected = cv2.perspectiveTransform(target[None], H)[0]
            rms = float(np.sqrt(np.mean(np.sum((projected - points) ** 2, axis=1))))
            if best is None or rms < best[2]:
                best = (H, points.astype(np.float64), rms)
    if best is None:
        raise ValueError("no homography")
    return best


@dataclass(frozen=True)
class Registration:
    homography: np.ndarray  # 3x3, target pixel (x, y, 1) -> capture pixel
    dots: np.ndarray  # (5, 2) refined capture positions in layout order
    rms_px: float  # reprojection error of the five dots
    scale: float  # capture pixels per target pixel


def _local_scale(H: np.ndarray, layout: TargetLayout) -> float:
    import cv2

    c = np.array([[[layout.width / 2, layout.height / 2], [layout.width / 2 + 1, layout.height / 2],
                   [layout.width / 2, layout.height / 2 + 1]]], np.float64)
    p = cv2.perspectiveTransform(c, H)[0]
    return float(math.sqrt(abs(np.cross(p[1] - p[0], p[2] - p[0]))))


def register_capture(capture: np.ndarray, layout: TargetLayout, name: str = "capture") -> Registration:
    """Homography target -> capture from the five dots; CalibrationError naming ``name`` if not found."""
    import cv2

    centres, _ = detect_dots(capture)
    if len(centres) < len(layout.dots):
        raise CalibrationError(f"{name}: fiducials not found (found {len(centres)} of {len(layout.dots)} dots; "
                               f"the whole target must be in frame and the blur smaller than a dot)")
    H, points, rms = _match_dots(centres, layout)
    scale = _local_scale(H, layout)
    spacing = scale * np.linalg.norm(layout.dots[1] - layout.dots[0])
    if rms > 0.02 * spacing:
        raise CalibrationError(f"{name}: fiducials not found (the dark blobs found do not form the target's "
                               f"dot layout: error {rms:.1f} px)")
    radius = 1.5 * layout.dot_radius * scale
    refined = np.stack([refine_dot_centre(capture, p, radius) for p in points])
    H, _ = cv2.findHomography(layout.dots.astype(np.float32), refined.astype(np.float32), 0)
    projected = cv2.perspectiveTransform(layout.dots[None].astype(np.float64), H)[0]
    rms = float(np.sqrt(np.mean(np.sum((projected - refined) ** 2, axis=1))))
    return Registration(H, refined, rms, _local_scale(H, layout))


def warp_target(target: np.ndarray, H: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The linear target in capture geometry (area pre-filtered when it is minified), and the
    mask of capture pixels inside the target."""
    import cv2

    th, tw = target.shape
    c = np.array([[[tw / 2, th / 2], [tw / 2 + 1, th / 2], [tw / 2, th / 2 + 1]]], np.float64)
    p = cv2.perspectiveTransform(c, H)[0]
    scale = math.sqrt(abs(np.cross(p[1] - p[0], p[2] - p[0])))
    source = target.astype(np.float32)
    if scale < 1.0:
        sw, sh = max(2, int(round(tw * scale))), max(2, int(round(th * scale)))
        source = cv2.resize(source, (sw, sh), interpolation=cv2.INTER_AREA)
        sx, sy = sw / tw, sh / th
        A = np.array([[1 / sx, 0, 0.5 / sx - 0.5], [0, 1 / sy, 0.5 / sy - 0.5], [0, 0, 1]])
        H = H @ A
    h, w = shape
    warped = cv2.warpPerspective(source, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                 borderValue=0)
    ones = np.ones(source.shape, np.float32)
    inside = cv2.warpPerspective(ones, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                 borderValue=0) > 0.999
    return warped.astype(np.float64), inside


def valid_region(inside: np.ndarray, kernel_size: int) -> np.ndarray:
    """Capture pixels whose whole kernel footprint lies inside the target and the frame."""
    import cv2

    r = kernel_size // 2
    mask = inside.astype(np.uint8)
    mask[:r] = 0
    mask[-r:] = 0
    mask[:, :r] = 0
    mask[:, -r:] = 0
    eroded = cv2.erode(mask, np.ones((kernel_size, kernel_size), np.uint8), borderType=cv2.BORDER_CONSTANT,
                       borderValue=0)
    return eroded.astype(bool)


# ----------------------------------------------------------------------------- photometry and PSF
def estimate_photometry(y: np.ndarray, x: np.ndarray, valid: np.ndarray, sigma: float) -> tuple[float, float]:
    """Gain and offset from heavily low-passed capture vs target (the PSF sums to 1, so a
    low-pass much wider than the PSF sees through it)."""
    from scipy.ndimage import gaussian_filter

    v = valid.astype(np.float64)
    norm = gaussian_filter(v, sigma, mode="constant") + 1e-12
    yl = gaussian_filter(y * v, sigma, mode="constant") / norm
    xl = gaussian_filter(x * v, sigma, mode="constant") / norm
    core = valid & (norm > 0.9)
    if core.sum() < 16:
        core = valid
    A = np.stack([xl[core], np.ones(core.sum())], axis=1)
    (gain, offset), *_ = np.linalg.lstsq(A, yl[core], rcond=None)
    return float(gain), float(offset)


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {k >= 0, sum k = 1} (sort-based, exact)."""
    flat = v.ravel()
    u = np.sort(flat)[::-1]
    css = np.cumsum(u) - 1.0
    idx = np.arange(1, flat.size + 1)
    rho = np.nonzero(u - css / idx > 0)[0][-1]
    theta = css[rho] / (rho + 1.0)
    return np.maximum(v - theta, 0.0)


def _reg_grad(k: np.ndarray) -> np.ndarray:
    g = np.zeros_like(k)
    gx = np.diff(k, axis=1)
    gy = np.diff(k, axis=0)
    g[:, :-1] -= gx
    g[:, 1:] += gx
    g[:-1, :] -= gy
    g[1:, :] += gy
    return g


class _CropProblem:
    """``k * x`` restricted to the valid pixels of a crop, by FFT ('valid' convolution)."""

    def __init__(self, x: np.ndarray, valid: np.ndarray, kernel_size: int) -> None:
        from scipy import fft

        self.fft = fft
        r = kernel_size // 2
        rows, cols = np.nonzero(valid)
        if rows.size == 0:
            raise ValueError("no valid pixels")
        self.r0, self.r1, self.c0, self.c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        self.K, self.r = kernel_size, r
        self.xc = x[self.r0 - r:self.r1 + r, self.c0 - r:self.c1 + r]
        self.vc = valid[self.r0:self.r1, self.c0:self.c1].astype(np.float64)
        self.n = float(self.vc.sum())
        # zero padding to fast FFT lengths wraps nothing: 'valid' outputs start at 2r >= every tap
        self.shape = (fft.next_fast_len(self.xc.shape[0], real=True), fft.next_fast_len(self.xc.shape[1], real=True))
        self.hc, self.wc = self.vc.shape
        self.mu = float(self.xc.mean())
        self.X = fft.rfft2(self.xc - self.mu, s=self.shape)

    def crop(self, image: np.ndarray) -> np.ndarray:
        return image[self.r0:self.r1, self.c0:self.c1]

    def predict_centred(self, k: np.ndarray) -> np.ndarray:
        """(k * (x - mu)) on the crop's valid block."""
        kp = np.zeros(self.shape)
        kp[:self.K, :self.K] = k
        full = self.fft.irfft2(self.fft.rfft2(kp) * self.X, s=self.shape)
        return full[2 * self.r:2 * self.r + self.hc, 2 * self.r:2 * self.r + self.wc]

    def predict(self, k: np.ndarray) -> np.ndarray:
        return self.predict_centred(k) + self.mu * k.sum()

    def adjoint(self, residual: np.ndarray) -> np.ndarray:
        full = np.zeros(self.shape)
        full[2 * self.r:2 * self.r + self.hc, 2 * self.r:2 * self.r + self.wc] = residual
        return self.fft.irfft2(self.fft.rfft2(full) * np.conj(self.X), s=self.shape)[:self.K, :self.K]


def solve_psf(problem: _CropProblem, z: np.ndarray, reg: float = DEFAULT_REG, iterations: int = 400,
              init: np.ndarray | None = None) -> np.ndarray:
    """min_k ||V (k*x - z)||^2 / (2n) + reg var(x) ||grad k||^2 / 2 over the simplex (FISTA).

    ``z`` is the photometrically normalised capture on the crop's valid block."""
    K = problem.K
    zc = problem.crop(z) - problem.mu
    var = float(np.var(problem.xc))
    lam = reg * var
    lipschitz = float(np.max(np.abs(problem.X) ** 2)) / problem.n + 8 * lam
    step = 1.0 / lipschitz
    k = np.full((K, K), 1.0 / K**2) if init is None else init.copy()
    y, t = k.copy(), 1.0
    for _ in range(iterations):
        residual = problem.vc * (problem.predict_centred(y) - zc)
        grad = problem.adjoint(residual) / problem.n + lam * _reg_grad(y)
        k_new = project_simplex(y - step * grad)
        t_new = 0.5 * (1 + math.sqrt(1 + 4 * t * t))
        if np.sum((k_new - k) * (y - k_new)) > 0:  # adaptive restart (O'Donoghue & Candes)
            t_new, y = 1.0, k_new.copy()
        else:
            y = k_new + (t - 1) / t_new * (k_new - k)
        k, t = k_new, t_new
    return k


@dataclass
class CaptureCalibration:
    name: str
    distance_m: float
    psf: np.ndarray  # (K, K), sum 1
    gain: float
    offset: float
    registration: Registration
    residual_rms: float  # RMS of (capture - prediction) over the valid pixels, / gain
    valid_fraction: float
    residual_image: np.ndarray = field(repr=False, default=None)  # capture - prediction, NaN outside
    explained: float = 1.0  # R^2: the share of the photo's variance (valid pixels) the prediction explains


def _refine_photometry(problem: _CropProblem, y: np.ndarray, k: np.ndarray) -> tuple[float, float]:
    p = problem.predict(k)
    v = problem.vc > 0
    A = np.stack([p[v], np.ones(v.sum())], axis=1)
    (gain, offset), *_ = np.linalg.lstsq(A, problem.crop(y)[v], rcond=None)
    return float(gain), float(offset)


def calibrate_capture(capture: np.ndarray, target: np.ndarray, layout: TargetLayout, distance_m: float,
                      kernel_size: int, name: str = "capture", reg: float = DEFAULT_REG,
                      refine_registration: bool = True, iterations: int = 300) -> CaptureCalibration:
    """One capture -> its PSF, gain, offset and registration."""
    capture = np.asarray(capture, np.float64)
    # [0, 1] values: a pixel at the maximum in any channel is clipped (checked on the target's pixels below)
    clipped_pixels = (capture >= 0.999).any(axis=2) if capture.ndim == 3 else capture >= 0.999
    in_unit_range = capture.max() <= 1.0
    if capture.ndim == 3:
        capture = capture.mean(axis=2)
    reg_result = register_capture(capture, layout, name)
    H = reg_result.homography
    k = None
    for attempt in range(2 if refine_registration else 1):
        x, inside = warp_target(target, H, capture.shape)
        valid = valid_region(inside, kernel_size)
        if valid.sum() < 20 * kernel_size**2:
            raise CalibrationError(f"{name}: the target covers too little of the frame for {kernel_size}x"
                                   f"{kernel_size} PSFs (move closer or use a larger target)")
        if attempt == 0 and in_unit_range:  # clipped pixels carry no PSF
            clipped = float(clipped_pixels[valid].mean())
            if clipped > MAX_CLIPPED:
                raise CalibrationError(f"{name}: {100 * clipped:.0f}% of the target's pixels are at the sensor's "
                                       "maximum (clipped): lower the exposure or the light and take it again")
        if k is None:
            gain, offset = estimate_photometry(capture, x, valid, sigma=2.0 * kernel_size)
        problem = _CropProblem(x, valid, kernel_size)
        final = attempt == 1 or not refine_registration
        # a rough PSF is enough for the ECC step; the last pass starts from it
        for _ in range(2 if final else 1):
            z = (capture - offset) / gain
            k = solve_psf(problem, z, reg, iterations // 2 if final else iterations // 3, init=k)
            gain, offset = _refine_photometry(problem, capture, k)
        if not final:
            refined = _refine_homography(capture, x, k, gain, offset, valid, H)
            H = H if refined is None else refined
    prediction = gain * problem.predict(k) + offset
    residual = np.full(capture.shape, np.nan)
    block = problem.crop(capture) - prediction
    block[problem.vc == 0] = np.nan
    residual[problem.r0:problem.r1, problem.c0:problem.c1] = block
    rms = float(np.sqrt(np.nanmean(block**2))) / abs(gain)
    # gain-free: a mirrored photo registered through a stray blob is explained 0.004, a sound one 0.999
    explained = 1.0 - float(np.nanmean(block**2)) / max(float(np.var(problem.crop(capture)[problem.vc > 0])), 1e-30)
    registration = Registration(H, reg_result.dots, reg_result.rms_px, reg_result.scale)
    return CaptureCalibration(name, float(distance_m), k, gain, offset, registration, rms,
                              float(valid.mean()), residual, explained)


def _refine_homography(capture, x, k, gain, offset, valid, H):
    """Align the rendered prediction to the capture (ECC, homography) and compose with H."""
    import cv2
    from scipy.signal import fftconvolve

    prediction = (gain * fftconvolve(x, k, mode="same") + offset).astype(np.float32)
    warp = np.eye(3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-6)
    try:
        _, warp = cv2.findTransformECC(capture.astype(np.float32), prediction, warp, cv2.MOTION_HOMOGRAPHY,
                                       criteria, valid.astype(np.uint8), 1)
    except cv2.error:
        return None
    # warp maps capture coords -> prediction coords (template = capture): the target sits at
    # inv(warp) applied to the current projection.
    correction = np.linalg.inv(warp.astype(np.float64))
    if np.abs(correction - np.eye(3)).max() > 0.05:  # implausible jump: keep the fiducial registration
        return None
    return correction @ H


# ----------------------------------------------------------------------------- thin-lens fit
def _centroid(k: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:k.shape[0], 0:k.shape[1]]
    s = k.sum()
    return np.array([(k * yy).sum() / s, (k * xx).sum() / s])


def _clean(k: np.ndarray) -> np.ndarray:
    return np.clip(k - 0.02 * k.max(), 0, None)


def _moment_size(k: np.ndarray) -> float:
    """Blur width in pixels from the second moment, as for a uniform square (var = c^2/12 per axis)."""
    k = _clean(k)
    cy, cx = _centroid(k)
    yy, xx = np.mgrid[0:k.shape[0], 0:k.shape[1]]
    var = ((k * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum() / k.sum())
    return float(math.sqrt(max(6.0 * var, 0.0)))


def _shift_to(k: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """``k`` moved so that its centroid sits at ``centre`` (row, col): a band-limited (Fourier)
    shift on a zero-padded grid, because interpolating a pixel-sized PSF would blur it."""
    from scipy.ndimage import fourier_shift

    pad = k.shape[0] // 2 + 2
    padded = np.pad(k, pad)
    moved = np.fft.ifft2(fourier_shift(np.fft.fft2(padded), centre - _centroid(k))).real
    return moved[pad:pad + k.shape[0], pad:pad + k.shape[1]]


def psf_correlation(a: np.ndarray, b: np.ndarray, align: bool = True) -> float:
    """Normalised (Pearson) correlation of two PSFs on a common odd grid; ``align`` first moves both
    centroids to the centre (the absolute PSF position is not observable from target photos)."""
    size = max(a.shape[-1], b.shape[-1])

    def embed(k):
        out = np.zeros((size, size))
        o = (size - k.shape[-1]) // 2
        out[o:o + k.shape[-1], o:o + k.shape[-1]] = k
        return out

    a, b = embed(np.asarray(a, np.float64)), embed(np.asarray(b, np.float64))
    if align:
        centre = np.array([size // 2, size // 2], np.float64)
        a, b = _shift_to(a, centre), _shift_to(b, centre)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum() + 1e-30))


@dataclass
class LensFit:
    a_px: float  # signed blur at infinity
    b_px_m: float  # d(c)/d(1/d) in px per dioptre (negative: blur grows behind focus)
    sigma0_px: float  # defocus-independent Gaussian blur
    pattern: np.ndarray  # aperture transmission (max 1), support filling the square
    cocs: np.ndarray  # fitted signed blur per capture
    measured_cocs: np.ndarray  # per-capture best-fit signed blur
    correlations: np.ndarray  # calibrated PSF vs model PSF per capture

    @property
    def focus_distance_m(self) -> float:
        """Where the blur vanishes (infinite if the fit has no zero crossing in front of the lens)."""
        return float(-self.b_px_m / self.a_px) if self.a_px > 0 else float("inf")

    @property
    def blur_per_dioptre_px(self) -> float:
        return float(abs(self.b_px_m))

    def coc_px(self, distance_m: float | np.ndarray) -> np.ndarray:
        return self.a_px + self.b_px_m / np.asarray(distance_m, np.float64)

    def psf(self, distance_m: float, kernel_size: int) -> np.ndarray:
        return model_psf(self.pattern, float(self.coc_px(distance_m)), self.sigma0_px, kernel_size)


def model_psf(pattern: np.ndarray, coc: float, sigma0: float, kernel_size: int) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    psf = render_coded_psf(pattern, coc, kernel_size, supersample=8).astype(np.float64)
    if sigma0 > 0:
        psf = gaussian_filter(psf, sigma0, mode="constant")
    return psf / psf.sum()


def _extract_pattern(k: np.ndarray, coc: float, centre: np.ndarray, cells: int, extent: float = 1.0) -> np.ndarray:
    """Sample PSF ``k`` on a ``cells`` x ``cells`` grid spanning ``extent`` aperture widths around
    ``centre`` (row, col), unrotated for c < 0, normalised to sum 1."""
    from scipy.ndimage import map_coordinates

    u = ((np.arange(cells) + 0.5) / cells - 0.5) * extent * abs(coc)
    rows, cols = np.meshgrid(centre[0] + u, centre[1] + u, indexing="ij")
    sample = np.clip(map_coordinates(k, [rows, cols], order=1, mode="constant"), 0, None)
    if coc < 0:
        sample = sample[::-1, ::-1]
    return sample / max(sample.sum(), 1e-30)


def _support(profile: np.ndarray) -> tuple[float, float]:
    """Sub-cell first/last half-plateau crossings of a pattern marginal: a blurred edge crosses
    half its plateau where the sharp edge was."""
    rough = profile >= 0.25 * profile.max()
    level = 0.5 * float(np.mean(profile[rough]))
    above = np.nonzero(profile >= level)[0]
    lo, hi = above[0], above[-1]
    lo_f = lo - (profile[lo] - level) / max(profile[lo] - (profile[lo - 1] if lo > 0 else 0.0), 1e-30)
    hi_f = hi + (profile[hi] - level) / max(profile[hi] - (profile[hi + 1] if hi + 1 < profile.size else 0.0), 1e-30)
    return float(lo_f + 0.5), float(hi_f + 0.5)  # in cell-edge units


def _fit_affine(u: np.ndarray, c: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
    A = np.stack([np.ones_like(u), u], axis=1) * np.sqrt(w)[:, None]
    (a, b), *_ = np.linalg.lstsq(A, c * np.sqrt(w), rcond=None)
    res = float(np.sqrt(np.sum(w * (a + b * u - c) ** 2) / np.sum(w)))
    return float(a), float(b), res


def _best_coc(k: np.ndarray, pattern: np.ndarray, sign: float, guess: float, sigma0: float) -> tuple[float, float]:
    """|c| maximising the correlation of the model PSF with ``k`` (coarse then fine grid)."""
    K = k.shape[-1]
    best = (-2.0, guess)
    lo, hi = max(0.0, 0.6 * guess - 1.0), min(K - 1.0, 1.4 * guess + 1.0)
    for grid in (np.linspace(lo, hi, 15), None):
        if grid is None:
            step = (hi - lo) / 14
            grid = np.linspace(max(0.0, best[1] - step), min(K - 1.0, best[1] + step), 9)
        for size in grid:
            corr = psf_correlation(k, model_psf(pattern, sign * size, sigma0, K))
            if corr > best[0]:
                best = (corr, float(size))
    return best[1], best[0]


def _render_operator(coc: float, cells: int, kernel_size: int, sigma0: float, supersample: int = 8) -> np.ndarray:
    """The 1-D factor A (K x M) of the geometric PSF: ``render_coded_psf(P, c) * sigma0 ~ A P A^T``
    for a pattern P of M x M cells (rotated by 180 deg for c < 0), scaled so sum(A P A^T) = sum(P)."""
    from scipy.ndimage import gaussian_filter1d

    size = max(abs(coc), 1.0 / supersample)
    half = kernel_size // 2
    offsets = (np.arange(kernel_size * supersample) + 0.5) / supersample - half - 0.5
    u = offsets / size + 0.5
    inside = (u >= 0) & (u < 1)
    idx = np.clip((u * cells).astype(int), 0, cells - 1)
    if coc < 0:
        idx = cells - 1 - idx
    A = np.zeros((kernel_size, cells))
    np.add.at(A, (np.arange(offsets.size)[inside] // supersample, idx[inside]), 1.0 / supersample)
    if sigma0 > 0:
        A = gaussian_filter1d(A, sigma0, axis=0, mode="constant")
    return A * (cells / size)


def _solve_pattern(psfs: list[np.ndarray], cocs: np.ndarray, sigma0: float, cells: int, offset: np.ndarray,
                   iterations: int = 300, reg: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares aperture pattern (>= 0) from every calibrated PSF at once, each PSF moved so
    its centroid sits where the model's is (c * the pattern's centroid offset). Unlike averaging
    rescaled PSFs, this does not blur the pattern by the pixels and sigma0 twice."""
    K = psfs[0].shape[-1]
    ops = [_render_operator(c, cells, K, sigma0) for c in cocs]
    weights = np.maximum(np.abs(cocs), 1.0) ** 2
    centre = np.array([K // 2, K // 2], np.float64)
    P = np.full((cells, cells), 1.0 / cells**2)
    for _ in range(2):
        targets = [_shift_to(k, centre + c * offset) for k, c in zip(psfs, cocs)]
        lipschitz = sum(w * np.linalg.norm(A, 2) ** 4 for w, A in zip(weights, ops)) + 8 * reg
        step = 1.0 / lipschitz
        y, t = P.copy(), 1.0
        for _ in range(iterations):
            grad = reg * _reg_grad(y)
            for w, A, k in zip(weights, ops, targets):
                grad += w * (A.T @ (A @ y @ A.T - k) @ A)
            P_new = np.maximum(y - step * grad, 0.0)
            t_new = 0.5 * (1 + math.sqrt(1 + 4 * t * t))
            y = P_new + (t - 1) / t_new * (P_new - P)
            P, t = P_new, t_new
        rows, cols = np.mgrid[0:cells, 0:cells]
        total = max(P.sum(), 1e-30)
        offset = np.array([(P * rows).sum() / total, (P * cols).sum() / total]) / cells - (cells - 1) / (2 * cells)
    return P / max(P.max(), 1e-30), offset


def fit_thin_lens(psfs: list[np.ndarray], distances: np.ndarray, cells: int | None = None,
                  iterations: int = 3) -> LensFit:
    """Thin-lens model and aperture pattern from calibrated PSFs at known distances."""
    distances = np.asarray(distances, np.float64)
    u = 1.0 / distances
    sizes = np.array([_moment_size(k) for k in psfs])
    weights = np.ones_like(u)
    # Sign split: far captures (small 1/d) are behind focus (c > 0), near ones in front; b < 0.
    order = np.argsort(u)
    best = None
    for split in range(len(u) + 1):
        sign = np.where(np.isin(np.arange(len(u)), order[:split]), 1.0, -1.0)
        a, b, res = _fit_affine(u, sign * sizes, weights)
        if b >= 0:
            continue
        if best is None or res < best[0]:
            best = (res, sign, a, b)
    if best is None:
        raise CalibrationError("the blur sizes do not follow the thin-lens model (no affine fit in 1/d)")
    _, signs, a, b = best
    cocs = a + b * u
    cells = cells or max(13, 2 * int(math.ceil(np.abs(cocs).max())) + 1)
    sigma0 = 0.5
    measured = cocs.copy()
    corrs = np.zeros(len(u))
    pattern = None
    for _ in range(iterations):
        # Pattern: PSFs rescaled to a common grid (1.5 aperture widths, so the support can be
        # located), rotated back in front of focus, averaged with weight ~ |c|^2 (resolution).
        use = np.abs(cocs) >= 2.0
        if not np.any(use):
            raise CalibrationError("every capture is within 2 px of focus: the aperture pattern is not observable")
        wts = np.where(use, cocs**2, 0.0)
        ext = 1.5
        ext_cells = int(round(ext * cells))
        acc = sum(w * _extract_pattern(k, c, _centroid(k), ext_cells, ext) for k, c, w in zip(psfs, cocs, wts)
                  if w > 0) / wts.sum()
        (r_lo, r_hi), (c_lo, c_hi) = _support(acc.sum(axis=1)), _support(acc.sum(axis=0))
        width = max(r_hi - r_lo, c_hi - c_lo) / ext_cells * ext  # in aperture widths
        # support centre relative to the grid centre, in aperture widths (row, col)
        offset = (np.array([(r_lo + r_hi) / 2, (c_lo + c_hi) / 2]) / ext_cells - 0.5) * ext
        cocs = cocs * width
        a, b = a * width, b * width
        offset = offset / width
        acc = sum(w * _extract_pattern(k, c, _centroid(k) + c * offset, cells, 1.0)
                  for k, c, w in zip(psfs, cocs, wts) if w > 0)
        pattern = acc / acc.max()
        # sigma0 and per-capture blur by correlation with the model
        best_sigma = None
        for s0 in (0.0, 0.3, 0.5, 0.7, 0.9, 1.2):
            score = np.mean([psf_correlation(k, model_psf(pattern, c, s0, k.shape[-1])) for k, c in zip(psfs, cocs)])
            if best_sigma is None or score > best_sigma[0]:
                best_sigma = (score, s0)
        sigma0 = best_sigma[1]
        for i, (k, c) in enumerate(zip(psfs, cocs)):
            size, corrs[i] = _best_coc(k, pattern, 1.0 if c >= 0 else -1.0, abs(c), sigma0)
            measured[i] = math.copysign(size, c)
        a, b, _ = _fit_affine(u, measured, np.maximum(np.abs(measured), 1.0))
        cocs = a + b * u
    # Final pattern by least squares against every PSF, sigma0 re-chosen with it.
    rows, cols = np.mgrid[0:cells, 0:cells]
    centroid = np.array([(pattern * rows).sum(), (pattern * cols).sum()]) / pattern.sum()
    offset = centroid / cells - (cells - 1) / (2 * cells)
    best_fit = None
    for s0 in (0.0, 0.3, 0.5, 0.7, 0.9, 1.2):
        P, mu = _solve_pattern(psfs, cocs, s0, cells, offset)
        corrs = np.array([psf_correlation(k, model_psf(P, c, s0, k.shape[-1])) for k, c in zip(psfs, cocs)])
        if best_fit is None or corrs.mean() > best_fit[0]:
            best_fit = (corrs.mean(), s0, P, corrs, mu)
    _, sigma0, pattern, corrs, mu = best_fit
    # Scale convention: the pattern's support box (half-plateau edges) is the aperture. Without
    # the double blur of the averaged pattern this is sharp; rescale c to it and solve again.
    for _ in range(2):
        (r_lo, r_hi), (c_lo, c_hi) = _support(pattern.sum(axis=1)), _support(pattern.sum(axis=0))
        width = min(1.0, max(r_hi - r_lo, c_hi - c_lo) / cells)
        if width > 0.98:
            break
        box_centre = np.array([(r_lo + r_hi) / 2, (c_lo + c_hi) / 2]) / cells - 0.5
        cocs, measured, a, b = cocs * width, measured * width, a * width, b * width
        pattern, mu = _solve_pattern(psfs, cocs, sigma0, cells, (mu - box_centre) / width)
    corrs = np.array([psf_correlation(k, model_psf(pattern, c, sigma0, k.shape[-1])) for k, c in zip(psfs, cocs)])
    return LensFit(a, b, sigma0, pattern, cocs, measured, corrs)


def bank_from_fit(fit: LensFit, near_m: float, far_m: float, num_layers: int, kernel_size: int | None = None,
                  metadata: dict[str, float] | None = None) -> PSFBank:
    depths = layer_depths(near_m, far_m, num_layers)
    cocs = fit.coc_px(depths)
    if kernel_size is None:
        kernel_size = int(math.ceil(np.abs(cocs).max() + 4 * fit.sigma0_px)) + 2
        kernel_size += 1 - kernel_size % 2
    psfs = np.stack([model_psf(fit.pattern, float(c), fit.sigma0_px, kernel_size) for c in cocs]).astype(np.float32)
    meta = dict(metadata or {})
    if np.isfinite(fit.focus_distance_m) and fit.focus_distance_m > 0:
        meta.setdefault("focus_distance_m", fit.focus_distance_m)
    return PSFBank(psfs, depths, meta, source="calibrated")


def extrapolated_layers(depths: np.ndarray, calibrated: np.ndarray, tolerance: float = 1e-3) -> list[int]:
    lo, hi = float(np.min(calibrated)), float(np.max(calibrated))
    return [i for i, d in enumerate(depths) if d < lo * (1 - tolerance) or d > hi * (1 + tolerance)]


@dataclass
class CalibrationResult:
    captures: list[CaptureCalibration]
    fit: LensFit
    bank: PSFBank
    extrapolated: list[int]
    warnings: list[str] = field(default_factory=list)  # what the caller should show: a bank written, but doubtful


def default_kernel_size(shape: tuple[int, int]) -> int:
    k = int(round(0.08 * min(shape)))
    return k + 1 - k % 2


def calibrate(target: np.ndarray, layout: TargetLayout, captures: list[tuple[float, np.ndarray, str]],
              near_m: float | None = None, far_m: float | None = None, num_layers: int = 16,
              kernel_size: int | None = None, reg: float = DEFAULT_REG, refine_registration: bool = True,
              metadata: dict[str, float] | None = None) -> CalibrationResult:
    """Every capture -> PSF, then the thin-lens fit and a bank of ``num_layers`` layers."""
    if len({round(d, 9) for d, _, _ in captures}) < MIN_DISTANCES:
        raise CalibrationError(f"need captures at {MIN_DISTANCES} or more distinct distances, got "
                               f"{len({d for d, _, _ in captures})}")
    shape = None
    for d, image, name in captures:
        if not (isinstance(d, (int, float)) and math.isfinite(d) and d > 0):
            raise CalibrationError(f"{name}: distance must be a positive number of metres, got {d!r}")
        if d > MAX_DISTANCE_M:
            raise CalibrationError(f"{name}: {d:g} m: distances are in metres, and a printed target farther than "
                                   f"{MAX_DISTANCE_M:g} m cannot be registered (millimetres?)")
        if shape is None:
            shape = image.shape[:2]
        elif image.shape[:2] != shape:
            raise CalibrationError(f"{name}: capture is {image.shape[1]}x{image.shape[0]}, the first capture is "
                                   f"{shape[1]}x{shape[0]}; all captures must come from the same camera mode")
    kernel_size = kernel_size or default_kernel_size(shape)
    if min(shape) < 4 * kernel_size:
        raise CalibrationError(f"{captures[0][2]}: capture {shape[1]}x{shape[0]} is too small for {kernel_size}x"
                               f"{kernel_size} PSFs")
    results = [calibrate_capture(image, target, layout, d, kernel_size, name, reg, refine_registration)
               for d, image, name in captures]
    for r in results:  # the target as registered must explain every photo
        if r.explained < MIN_EXPLAINED:
            raise CalibrationError(
                f"{r.name}: the registered target does not explain this photo (it explains {100 * r.explained:.1f}% "
                f"of its variance; sound photos 99.9%): a mirrored or different target, motion during the exposure, "
                "or another photo?")
    distances = np.array([r.distance_m for r in results])
    fit = fit_thin_lens([r.psf for r in results], distances)
    near = float(distances.min()) if near_m is None else near_m
    far = float(distances.max()) if far_m is None else far_m
    # the frame the PSFs were measured at: a frame binned or scaled to another size no longer fits them
    frame = {"frame_width_px": float(shape[1]), "frame_height_px": float(shape[0])}
    bank = bank_from_fit(fit, near, far, num_layers, metadata={**frame, **(metadata or {})})
    warnings = [f"{r.name} ({r.distance_m:g} m): its PSF follows the fitted thin-lens model poorly (correlation "
                f"{corr:.2f}): check its distance, the photos' order, and --input-transfer (sRGB photos?); "
                "validate the bank with `cadfd psf-bank check`"
                for r, corr in zip(results, fit.correlations) if corr < MIN_MODEL_CORRELATION]
    return CalibrationResult(results, fit, bank, extrapolated_layers(bank.depths, distances), warnings)


# ----------------------------------------------------------------------------- checking a bank
@dataclass
class CheckRow:
    name: str
    distance_m: float
    depth_m: float  # the depth the bank reads (best re-blur layer, refined between layers)
    residual_rms: float  # re-blur RMS at that depth, / gain
    residuals: np.ndarray  # per sub-layer (``substeps`` per layer interval)

    @property
    def error_m(self) -> float:
        return self.depth_m - self.distance_m

    @property
    def relative_error(self) -> float:
        return self.error_m / self.distance_m


def check_capture(bank: PSFBank, target: np.ndarray, layout: TargetLayout, capture: np.ndarray, distance_m: float,
                  name: str = "capture", substeps: int = 4) -> CheckRow:
    """The depth a bank reads from a target photo: the layer whose PSF re-blurs the registered
    target best (gain and offset fitted per layer). Each PSF is centred on its centroid first,
    because the dot registration already absorbed the true PSF's centroid."""
    capture = np.asarray(capture, np.float64)
    if capture.ndim == 3:
        capture = capture.mean(axis=2)
    reg = register_capture(capture, layout, name)
    K = bank.kernel_size + 2
    psfs = bank.psfs_for_channels(1)[:, 0].astype(np.float64)
    # sub-layers: PSFs blended linearly in the layer coordinate (linear in inverse depth), as
    # the solver's soft layer weights do, so the reading is finer than the layer spacing
    coords = np.linspace(0, len(psfs) - 1, (len(psfs) - 1) * substeps + 1)
    kernels = []
    for coord in coords:
        lo = min(int(np.floor(coord)), len(psfs) - 2)
        frac = coord - lo
        k = _shift_to(np.pad((1 - frac) * psfs[lo] + frac * psfs[lo + 1], 1), np.array([K // 2, K // 2], np.float64))
        k = np.clip(k, 0, None)
        kernels.append(k / k.sum())

    def curve(H):
        x, inside = warp_target(target, H, capture.shape)
        valid = valid_region(inside, K)
        if valid.sum() < 20 * K**2:
            raise CalibrationError(f"{name}: the target covers too little of the frame for the bank's "
                                   f"{bank.kernel_size}x{bank.kernel_size} PSFs")
        problem = _CropProblem(x, valid, K)
        v = problem.vc > 0
        yc = problem.crop(capture)[v]
        out = []
        for k in kernels:
            p = problem.predict(k)[v]
            A = np.stack([p, np.ones_like(p)], axis=1)
            (gain, offset), *_ = np.linalg.lstsq(A, yc, rcond=None)
            out.append((float(np.sqrt(np.mean((A @ [gain, offset] - yc) ** 2))) / max(abs(gain), 1e-9), gain, offset))
        return x, valid, out

    # The dots are good to a fraction of a pixel; that is enough to find the layer roughly, then
    # the registration is refined against that layer's prediction (ECC) and every layer re-scored.
    H = reg.homography
    x, valid, scored = curve(H)
    best = int(np.argmin([r for r, _, _ in scored]))
    refined = _refine_homography(capture, x, kernels[best], scored[best][1], scored[best][2], valid, H)
    if refined is not None:
        x, valid, scored = curve(refined)
    residuals = np.array([r for r, _, _ in scored])
    inv_layers = 1.0 / bank.depths.astype(np.float64)
    inv = np.interp(coords, np.arange(len(psfs)), inv_layers)
    best = int(np.argmin(residuals))
    inv_best = inv[best]
    if 0 < best < len(residuals) - 1:  # parabola through the best sub-layer and its neighbours
        r0, r1, r2 = residuals[best - 1:best + 2]
        denom = r0 - 2 * r1 + r2
        if denom > 0:
            t = float(np.clip(0.5 * (r0 - r2) / denom, -0.5, 0.5))
            inv_best = inv[best] + t * (inv[best + 1] - inv[best - 1]) / 2
    return CheckRow(name, float(distance_m), float(1.0 / inv_best), float(residuals[best]), residuals)
