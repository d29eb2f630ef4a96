"""``cadfd bench --cameras``: every method on many camera designs, per camera, with ceilings.

Each camera of ``config/cameras.toml`` (lens, mask, layers, sensor, noise, frame size) is rendered
into a PSF bank; scenes are photos of one split (tuning or held-out, written down in that file) over
procedural depth, rendered by the occlusion-aware model, noised and quantised to the sensor's bits.

Rows per camera: constant depth (with the capture as its image), classical, DFD-DPS, and two
ceilings that attribute each loss:
* ``depth ceiling``: depth read from the *true* sharp image by local re-blur evidence in 7x7
  windows (what the evidence could give with a perfect image; a reference, not a bound);
* ``AIF ceiling``: our sampler's all-in-focus image given the *true* depth (what the prior and the
  data step could give with perfect depth).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import math
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cadfd_ros.bench.metrics import evaluation_mask, textured_mask, within_delta1
from cadfd_ros.bench.runner import score
from cadfd_ros.bench.scenes import Scene, make_scene
from cadfd_ros.params import PARAM_BY_NAME
from cadfd_ros.errors import CadfdError
from cadfd_ros.optics.psf_bank import PSFBank

if TYPE_CHECKING:
    from cadfd_ros.pipeline import ReconstructionConfig
    from cadfd_ros.solvers.classical import ClassicalSolver
    from cadfd_ros.solvers.dps import DiffusionPosteriorSampler

CEILING_WINDOW = 7  # px, the depth ceiling's evidence window
DECILES = 10
MIN_CONFIDENCE_LEVELS = (0.0, 0.25, 0.5, 0.75, 0.9)  # the bench's min_confidence trade


@dataclass(frozen=True)
class CameraSpec:
    name: str
    channels: int
    bits: int
    noise: float
    size: tuple[int, int]  # height, width
    bank: str = ""  # "bundled" for the shipped bank; empty: synthesise from the fields below
    mask: str = "designed"
    focal_length_mm: float = 12.0
    f_number: float = 4.0
    focus_m: float = 0.23
    pitch_um: float = 7.5
    near_m: float = 0.5
    far_m: float = 5.0
    layers: int = 16
    note: str = ""

    def psf_bank(self) -> PSFBank:
        from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank

        if self.bank == "bundled":
            return load_psf_bank(default_psf_bank_path())
        if self.bank:
            return load_psf_bank(self.bank)
        from cadfd_ros.optics.thin_lens import ThinLens, synthesize_psf_bank

        lens = ThinLens(self.focal_length_mm * 1e-3, self.f_number, self.focus_m, self.pitch_um * 1e-6)
        bank = synthesize_psf_bank(mask_pattern(self.mask), lens, self.near_m, self.far_m, self.layers)
        return PSFBank(bank.psfs, bank.depths, bank.metadata, source=f"camera {self.name}")


def blur_range_px(bank: PSFBank) -> tuple[float, float]:
    """Signed blur diameters at the near and far ends of a bank (negative: in front of focus), from its
    thin-lens metadata; NaN for a bank without it."""
    from cadfd_ros.optics.thin_lens import circle_of_confusion_px

    meta = bank.metadata
    if not {"focal_length_m", "f_number", "focus_distance_m", "pixel_pitch_m"} <= set(meta):
        return float("nan"), float("nan")
    c = circle_of_confusion_px(bank.depths[[0, -1]], meta["focal_length_m"], meta["f_number"],
                               meta["focus_distance_m"], meta["pixel_pitch_m"])
    return float(c[0]), float(c[1])


def mask_pattern(spec: str) -> np.ndarray:
    """An aperture pattern by name: designed, alt, circle or random:N:SEED."""
    from cadfd_ros.optics.masks import circular_pattern, load_pattern
    from cadfd_ros.resources import DATA_DIR, config_dir

    if spec == "designed":
        return load_pattern(config_dir() / "default_mask.png")
    if spec == "alt":
        return load_pattern(DATA_DIR / "alt_mask.png")
    if spec == "circle":
        return circular_pattern()
    if spec.startswith("random:"):
        try:
            _, cells, seed = spec.split(":")
            cells, seed = int(cells), int(seed)
        except ValueError:
            raise CadfdError(f"mask {spec!r}: expected random:CELLS:SEED") from None
        rng = np.random.default_rng(seed)
        pattern = np.zeros(cells * cells)
        pattern[rng.permutation(cells * cells)[: (cells * cells + 1) // 2]] = 1.0
        return pattern.reshape(cells, cells)
    raise CadfdError(f"mask {spec!r}: expected designed, alt, circle or random:CELLS:SEED")


@dataclass(frozen=True)
class PhotoSplit:
    tuning: tuple[str, ...]
    heldout: tuple[str, ...]


def load_cameras(path: str | Path) -> tuple[list[CameraSpec], PhotoSplit]:
    """The cameras and the photo split of a camera-matrix file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CadfdError(f"camera file {path}: {exc}") from exc
    known = set(CameraSpec.__dataclass_fields__)
    cameras = []
    for index, entry in enumerate(data.get("camera", [])):
        unknown = set(entry) - known
        if unknown:
            raise CadfdError(f"camera file {path}: camera {index} has unknown keys {sorted(unknown)}")
        try:
            entry = dict(entry, size=tuple(entry["size"]))
            cameras.append(CameraSpec(**entry))
        except (KeyError, TypeError) as exc:
            raise CadfdError(f"camera file {path}: camera {index}: {exc}") from exc
    if not cameras:
        raise CadfdError(f"camera file {path}: no [[camera]] entries")
    photos = data.get("photos", {})
    split = PhotoSplit(tuple(photos.get("tuning", ())), tuple(photos.get("heldout", ())))
    overlap = set(split.tuning) & set(split.heldout)
    if overlap:
        raise CadfdError(f"camera file {path}: photos {sorted(overlap)} are both tuning and held out")
    return cameras, split


def default_cameras_path() -> Path:
    from cadfd_ros.resources import config_dir

    return config_dir() / "cameras.toml"


def heldout_cameras_path() -> Path:
    """Camera designs outside the matrix the defaults were tuned on; only ever measured."""
    from cadfd_ros.resources import config_dir

    return config_dir() / "cameras_heldout.toml"


def quantise(capture: np.ndarray, bits: int) -> np.ndarray:
    levels = float(2**bits - 1)
    return (np.round(np.clip(capture, 0, 1) * levels) / levels).astype(np.float32)


def camera_scenes(camera: CameraSpec, bank: PSFBank, photos: tuple[str, ...], seed: int, repeats: int = 1,
                  motion_px: int = 0, measured_depth: bool = False) -> list[Scene]:
    height, width = camera.size
    scenes = []
    for r in range(repeats):
        for i, photo in enumerate(photos):
            scene = make_scene(photo, bank, height, width, camera.noise, seed=seed + 1000 * r + i,
                               channels=camera.channels, name=f"{photo}#{r}" if repeats > 1 else photo,
                               motion_px=motion_px, measured=measured_depth)
            scene.capture = quantise(scene.capture, camera.bits)
            scenes.append(scene)
    return scenes


# ---------------------------------------------------------------------------------------------- ceilings
def depth_ceiling(scene: Scene, bank: PSFBank, device: str = "cpu") -> np.ndarray:
    """Depth from the true sharp image: per-pixel argmin over layers of the 7x7-windowed re-blur error,
    refined to a sub-layer coordinate by a parabola (no regularisation)."""
    import torch
    import torch.nn.functional as F

    from cadfd_ros.forward.layers import layer_coord_to_depth
    from cadfd_ros.forward.operators import LayeredBlur
    from cadfd_ros.solvers.classical import subpixel_argmin

    sharp = scene.sharp if scene.sharp.ndim == 3 else scene.sharp[:, :, None]
    capture = scene.capture if scene.capture.ndim == 3 else scene.capture[:, :, None]
    x = torch.from_numpy(np.ascontiguousarray(sharp)).permute(2, 0, 1)[None].to(device)
    y = torch.from_numpy(np.ascontiguousarray(capture)).permute(2, 0, 1)[None].to(device)
    op = LayeredBlur(torch.from_numpy(bank.psfs_for_channels(x.shape[1])).to(device), *x.shape[-2:])
    with torch.no_grad():
        error = ((op.blur_layers(op.pad_image(x)) - y.unsqueeze(1)) ** 2).sum(dim=2)  # (1, L, H, W)
        cost = F.avg_pool2d(error, CEILING_WINDOW, stride=1, padding=CEILING_WINDOW // 2, count_include_pad=False)
        coord = subpixel_argmin(cost)[2].double()
        depth = layer_coord_to_depth(coord[:, 0], torch.from_numpy(bank.depths).double().to(device))
    return depth[0].float().cpu().numpy()


def aif_ceiling(scene: Scene, bank: PSFBank, sampler: DiffusionPosteriorSampler, classical: ClassicalSolver
                ) -> np.ndarray:
    """Our sampler's all-in-focus image with the layer coordinate fixed to the true depth."""
    from dataclasses import replace

    import torch

    from cadfd_ros.forward.layers import depth_to_layer_coord
    from cadfd_ros.forward.operators import image_batch
    from cadfd_ros.result import SolverStart

    capture = scene.capture
    coord = depth_to_layer_coord(torch.from_numpy(scene.depth.astype(np.float64))[None],
                                 torch.from_numpy(bank.depths).double()).float()
    sigma = scene.noise_sigma
    image = image_batch(capture)
    op = classical.operator(*image.shape[-2:], image.shape[1])
    with torch.no_grad():
        x = classical.all_in_focus(image, coord, sigma, op.pad)
    params = sampler.params
    sampler.params = replace(params, depth_update="fixed")
    try:
        result = sampler.solve(capture, SolverStart(layer_coord=coord, padded_image=x, noise_sigma=sigma))
    finally:
        sampler.params = params
    return result.all_in_focus


# ---------------------------------------------------------------------------------------------- scoring
def reliability(depth: np.ndarray, confidence: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> list[float]:
    """delta<1.25 in each confidence decile of the masked pixels, least confident first. Equal confidences
    (many pixels read exactly 0) are split at random, not in raster order, so tied deciles say the same."""
    valid = mask & np.isfinite(depth) & (truth > 0)
    d, t, c = depth[valid], truth[valid], confidence[valid]
    if d.size < DECILES:
        return [float("nan")] * DECILES
    order = np.lexsort((np.random.default_rng(0).permutation(c.size), c))
    good = within_delta1(d, t)[order]
    return [float(chunk.mean()) for chunk in np.array_split(good, DECILES)]


def confidence_auc(depth: np.ndarray, confidence: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """How well confidence ranks errors: the area under the ROC curve of confidence as a predictor of delta<1.25
    over the masked pixels (0.5: no ranking, 1: every right pixel above every wrong one; ties count half). NaN
    where every pixel is right or every one wrong."""
    from sklearn.metrics import roc_auc_score

    valid = mask & np.isfinite(depth) & (truth > 0)
    good = within_delta1(depth[valid], truth[valid])
    if good.all() or not good.any():
        return float("nan")
    return float(roc_auc_score(good, confidence[valid]))


def coverage_counts(depth: np.ndarray, confidence: np.ndarray, truth: np.ndarray, mask: np.ndarray
                    ) -> np.ndarray:
    """``min_confidence``'s trade, as counts to pool over scenes: per level of MIN_CONFIDENCE_LEVELS
    (rows), the masked pixels, those kept (confidence >= level) and those kept with delta<1.25."""
    valid = mask & (truth > 0)
    d, t, c = depth[valid], truth[valid], confidence[valid]
    finite = np.isfinite(d)
    good = finite & within_delta1(d, t)
    return np.array([[valid.sum(), (finite & (c >= level)).sum(), (good & (c >= level)).sum()]
                     for level in MIN_CONFIDENCE_LEVELS], np.int64)


@dataclass
class CameraResult:
    camera: CameraSpec
    blur_px: tuple[float, float]
    rows: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # method -> per-scene metrics
    scenes: list[str] = field(default_factory=list)  # the scene of each row, in order
    textured_share: list[float] = field(default_factory=list)  # per scene: textured pixels / evaluated pixels
    reliability: dict[str, list[float]] = field(default_factory=dict)  # method -> delta per decile
    coverage: dict[str, np.ndarray] = field(default_factory=dict)  # method -> coverage_counts pooled over scenes
    example: tuple | None = None  # (scene, {method: (depth, aif)}) of the worst scene for DFD-DPS

    def mean(self, method: str, key: str) -> float:
        values = [row[key] for row in self.rows.get(method, []) if key in row]
        return float(np.nanmean(values)) if values else float("nan")

    def lead(self, method: str, reference: str, key: str) -> tuple[float, float]:
        a, b = self.rows.get(method, []), self.rows.get(reference, [])
        diff = np.array([x[key] - y[key] for x, y in zip(a, b)])
        if diff.size == 0:
            return float("nan"), float("nan")
        se = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else float("nan")
        return float(diff.mean()), se

    def trade(self, method: str) -> list[tuple[float, float, float]]:
        """Per MIN_CONFIDENCE_LEVELS: (level, fraction of textured pixels kept, delta<1.25 of those kept)."""
        counts = self.coverage.get(method)
        if counts is None:
            return []
        return [(level, kept / total if total else float("nan"), good / kept if kept else float("nan"))
                for level, (total, kept, good) in zip(MIN_CONFIDENCE_LEVELS, counts.tolist())]


def run_camera(camera: CameraSpec, photos: tuple[str, ...], steps: int = PARAM_BY_NAME["steps"].default,
               seed: int = 0, repeats: int = 1, device: str = "cpu", progress: bool = True,
               config: ReconstructionConfig | None = None, motion_px: int = 0, measured_depth: bool = False
               ) -> CameraResult:
    """Every scene of ``camera`` through every method and both ceilings. ``config``: the solver settings
    (``cadfd bench``'s solver flags: the prior, the noise model, ...); method, steps, seed and device are this
    function's. ``motion_px``: the captures blurred by a sideways camera motion; ``measured_depth``: each photo over
    its own measured geometry instead of procedural depth (``make_scene``)."""
    from dataclasses import replace

    from tqdm import tqdm

    from cadfd_ros.pipeline import ReconstructionConfig, Reconstructor

    bank = camera.psf_bank()
    result = CameraResult(camera, blur_range_px(bank))
    config = replace(config or ReconstructionConfig(), method="dps", steps=steps, seed=seed, device=device)
    reconstructor = Reconstructor(bank, config)
    middle = 2.0 / (1.0 / bank.depths[0] + 1.0 / bank.depths[-1])
    from cadfd_ros.solvers.classical import ClassicalSolver

    # the classical row is the classical method, not the sampler's cheaper start
    classical_solver = ClassicalSolver(bank, device=device, noise_model=reconstructor.config.noise_model)
    worst = None
    scenes = camera_scenes(camera, bank, photos, seed, repeats, motion_px, measured_depth)
    for scene in tqdm(scenes, desc=camera.name, disable=not progress):
        border = evaluation_mask(scene.depth.shape, bank.half_size)
        textured = border & textured_mask(scene.sharp)
        result.scenes.append(scene.name)
        result.textured_share.append(float(textured.sum() / max(border.sum(), 1)))
        start = time.perf_counter()
        classical = classical_solver.estimate(scene.capture)[0]
        classical_s = time.perf_counter() - start
        start = time.perf_counter()
        dps = reconstructor.sampler.solve(scene.capture, reconstructor.classical.estimate(scene.capture)[1])
        dps_s = time.perf_counter() - start
        outputs = {
            "constant": (np.full(scene.depth.shape, middle, np.float32), None),
            "capture": (None, scene.capture),
            "classical": (classical.depth, classical.all_in_focus),
            "DFD-DPS": (dps.depth, dps.all_in_focus),
            "depth ceiling": (depth_ceiling(scene, bank, reconstructor.device), None),
            "AIF ceiling": (None, aif_ceiling(scene, bank, reconstructor.sampler, reconstructor.classical)),
        }
        for name, (depth, aif) in outputs.items():
            row = score(depth, aif, scene, bank)
            if name == "classical":
                row["seconds"] = classical_s
            elif name == "DFD-DPS":
                row["seconds"] = dps_s
            result.rows.setdefault(name, []).append(row)
        for name, solved in (("classical", classical), ("DFD-DPS", dps)):
            result.rows[name][-1]["confidence_auc"] = confidence_auc(solved.depth, solved.confidence, scene.depth,
                                                                     textured)
            per_scene = reliability(solved.depth, solved.confidence, scene.depth, textured)
            result.reliability.setdefault(name, []).append(per_scene)
            counts = coverage_counts(solved.depth, solved.confidence, scene.depth, textured)
            result.coverage[name] = result.coverage.get(name, 0) + counts
        lead = result.rows["DFD-DPS"][-1]["tex_delta1"] - result.rows["classical"][-1]["tex_delta1"]
        if worst is None or lead < worst[0]:
            worst = (lead, scene, {k: v for k, v in outputs.items() if k in ("classical", "DFD-DPS")})
    result.reliability = {k: list(np.nanmean(np.array(v), axis=0)) for k, v in result.reliability.items()}
    result.example = worst[1:] if worst else None
    return result


# ---------------------------------------------------------------------------------------------- reports
def _camera_cells(mean, blur: str, frame: str, noise: str) -> str:
    """One row of the camera table; ``mean(method, key)`` gives the figure."""
    ceiling = mean("depth ceiling", "tex_delta1")
    psnr = " → ".join(f"{mean(m, 'aif_psnr'):.2f}" for m in ("capture", "classical", "DFD-DPS"))
    ssim = " → ".join(f"{mean(m, 'aif_ssim'):.3f}" for m in ("capture", "classical", "DFD-DPS"))
    return (f"| {blur} | {frame} | {noise} | {mean('constant', 'tex_delta1'):.3f} | {mean('classical', 'tex_delta1'):.3f} "
            f"| {mean('DFD-DPS', 'tex_delta1'):.3f} | {ceiling:.3f} | {mean('DFD-DPS', 'tex_delta1') / ceiling:.0%} "
            f"| {mean('classical', 'tex_abs_rel'):.3f} | {mean('DFD-DPS', 'tex_abs_rel'):.3f} "
            f"| {psnr} ({mean('AIF ceiling', 'aif_psnr'):.2f}) | {ssim} ({mean('AIF ceiling', 'aif_ssim'):.3f}) "
            f"| {mean('DFD-DPS', 'seconds'):.2f} |")


def camera_table(results: list[CameraResult]) -> str:
    """Per camera: delta (textured), AbsRel, AIF PSNR/SSIM of each method, the ceilings; then the mean."""
    head = ("| camera | blur px | frame | σ | constant δ | classical δ | DFD-DPS δ | depth ceiling δ "
            "| DFD-DPS / ceiling | classical AbsRel | DFD-DPS AbsRel "
            "| AIF PSNR capture → classical → DFD-DPS (AIF ceiling) "
            "| AIF SSIM capture → classical → DFD-DPS (AIF ceiling) | s/frame DFD-DPS |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        c = r.camera
        frame = f"{c.size[1]}×{c.size[0]} {'RGB' if c.channels == 3 else 'mono'} {c.bits}-bit"
        lines.append(f"| {c.name} " + _camera_cells(r.mean, f"{r.blur_px[0]:+.1f} … {r.blur_px[1]:+.1f}", frame,
                                                     f"{c.noise:g}"))

    def over_cameras(method: str, key: str) -> float:
        return float(np.mean([r.mean(method, key) for r in results]))

    lines.append(f"| **mean over {len(results)} cameras** " + _camera_cells(over_cameras, "", "", ""))
    return "\n".join(lines)


def lead_table(results: list[CameraResult]) -> str:
    """Paired per-scene leads (mean ± standard error) against the issue's acceptance lines."""
    lines = ["| camera | scenes | DFD-DPS − classical δ | classical − constant δ | DFD-DPS AIF − capture PSNR "
             "| DFD-DPS − capture SSIM | confidence AUC (DFD-DPS) | reliability δ, least → most confident decile "
             "(DFD-DPS) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        def fmt(pair: tuple[float, float], digits: int = 3) -> str:
            if not np.isfinite(pair[1]):  # one scene: no standard error
                return f"{pair[0]:+.{digits}f}"
            return f"{pair[0]:+.{digits}f} ± {pair[1]:.{digits}f}"

        curve = r.reliability.get("DFD-DPS", [])
        lines.append(
            f"| {r.camera.name} | {len(r.rows.get('DFD-DPS', []))} | {fmt(r.lead('DFD-DPS', 'classical', 'tex_delta1'))} "
            f"| {fmt(r.lead('classical', 'constant', 'tex_delta1'))} "
            f"| {fmt(r.lead('DFD-DPS', 'capture', 'aif_psnr'), 2)} | {fmt(r.lead('DFD-DPS', 'capture', 'aif_ssim'))} "
            f"| {r.mean('DFD-DPS', 'confidence_auc'):.3f} | {' '.join(f'{v:.2f}' for v in curve)} |")
    return "\n".join(lines)


def side_table(results: list[CameraResult]) -> str:
    """For banks that straddle focus: delta, and delta counting a depth mirrored across focus as right (what
    knowing the side of focus would give), per method; the gap is the loss to the side of focus."""
    methods = ("classical", "DFD-DPS", "depth ceiling")
    lines = ["| camera | " + " | ".join(f"{m} δ → either side" for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    for r in results:
        if not any("tex_delta1_either_side" in row for row in r.rows.get("DFD-DPS", [])):
            continue
        cells = " | ".join(f"{r.mean(m, 'tex_delta1'):.3f} → {r.mean(m, 'tex_delta1_either_side'):.3f}" for m in methods)
        lines.append(f"| {r.camera.name} | {cells} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def trade_table(results: list[CameraResult], method: str = "DFD-DPS") -> str:
    """``min_confidence``'s trade per camera: the share of textured pixels kept and their delta<1.25."""
    head = "| camera | " + " | ".join(f"min_confidence {level:g}: kept, δ" for level in MIN_CONFIDENCE_LEVELS) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        cells = " | ".join(f"{kept:.0%}, {delta:.3f}" for _, kept, delta in r.trade(method))
        lines.append(f"| {r.camera.name} | {cells} |")
    trades = np.array([r.trade(method) for r in results if r.trade(method)])  # (cameras, levels, 3)
    if trades.size:
        mean = np.nanmean(trades, axis=0)
        lines.append(f"| **mean over {len(trades)} cameras** | "
                     + " | ".join(f"{kept:.0%}, {delta:.3f}" for _, kept, delta in mean) + " |")
    return "\n".join(lines)


SCENE_KEYS = ("tex_delta1", "aif_psnr", "aif_ssim")
DEPTH_ROWS = ("constant", "classical", "DFD-DPS", "depth ceiling")  # the rows with a depth, in table order


def scene_table(results: list[CameraResult]) -> str:
    """Every scene's figures, so that one photo that moves a camera's mean can be seen."""
    lines = ["| camera | scene | textured share | constant δ | classical δ | DFD-DPS δ | depth ceiling δ "
             "| AIF PSNR capture → classical → DFD-DPS |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for i, name in enumerate(r.scenes):
            # every method has one row per scene, in scene order (run_camera)
            delta = " | ".join(f"{r.rows[m][i]['tex_delta1']:.3f}" for m in DEPTH_ROWS)
            psnr = " → ".join(f"{r.rows[m][i]['aif_psnr']:.2f}" for m in ("capture", "classical", "DFD-DPS"))
            lines.append(f"| {r.camera.name} | {name} | {r.textured_share[i]:.0%} | {delta} | {psnr} |")
    return "\n".join(lines)


def results_json(results: list[CameraResult]) -> dict:
    out = {}
    for r in results:
        methods = {}
        for name, rows in r.rows.items():
            keys = sorted({k for row in rows for k in row})
            methods[name] = {k: r.mean(name, k) for k in keys}
        out[r.camera.name] = {
            "blur_px": list(r.blur_px),
            "methods": methods,
            "leads": {
                "dps_minus_classical_delta": r.lead("DFD-DPS", "classical", "tex_delta1"),
                "classical_minus_constant_delta": r.lead("classical", "constant", "tex_delta1"),
                "dps_minus_capture_psnr": r.lead("DFD-DPS", "capture", "aif_psnr"),
                "dps_minus_capture_ssim": r.lead("DFD-DPS", "capture", "aif_ssim"),
            },
            "scenes": [{"scene": name, "textured_share": r.textured_share[i],
                        **{m: {k: rows[i][k] for k in SCENE_KEYS if k in rows[i]} for m, rows in r.rows.items()}}
                       for i, name in enumerate(r.scenes)],
            "reliability_delta_by_confidence_decile": r.reliability,
            "min_confidence_trade": {m: [{"min_confidence": level, "kept": kept, "delta1": delta}
                                         for level, kept, delta in r.trade(m)] for m in r.coverage},
        }
    return out


def _same_cameras(runs: list[dict], table: str) -> list[str]:
    """The cameras of ``runs`` (``results_json`` of one run per seed), which must be the same in every run."""
    if not runs:
        raise ValueError(f"{table}: no runs")
    cameras = list(runs[0])
    for run in runs[1:]:
        if list(run) != cameras:
            raise ValueError(f"{table}: runs differ in cameras ({list(run)} against {cameras})")
    return cameras


def seed_means_table(runs: list[dict]) -> str:
    """The README's table over seeds: per camera, the mean over runs (``results_json`` of ``--seed`` 0, 1, ...,
    same cameras and photos) of each run's camera mean, with each run's paired lead, and a mean over cameras."""
    cameras = _same_cameras(runs, "seed_means_table")
    head = ("| camera | blur px | constant δ | classical δ | DFD-DPS δ | depth ceiling δ | DFD-DPS / ceiling "
            "| DFD-DPS − classical δ (per run) | classical − constant δ (per run) "
            "| AIF PSNR capture → DFD-DPS (lead per run) | AIF SSIM capture → DFD-DPS (lead per run) "
            "| conf. AUC (per run) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def per_run(camera: str, method: str, key: str) -> np.ndarray:
        return np.array([run[camera]["methods"][method][key] for run in runs])

    def runs_text(values: np.ndarray, digits: int = 3) -> str:
        return " / ".join(f"{v:+.{digits}f}" for v in values)

    totals: dict[str, list[float]] = {}
    for camera in cameras:
        delta = {m: per_run(camera, m, "tex_delta1") for m in DEPTH_ROWS}
        psnr = {m: per_run(camera, m, "aif_psnr") for m in ("capture", "DFD-DPS")}
        ssim = {m: per_run(camera, m, "aif_ssim") for m in ("capture", "DFD-DPS")}
        auc = per_run(camera, "DFD-DPS", "confidence_auc")
        lead, over_constant = delta["DFD-DPS"] - delta["classical"], delta["classical"] - delta["constant"]
        for key, value in (("constant", delta["constant"]), ("classical", delta["classical"]),
                           ("dps", delta["DFD-DPS"]), ("ceiling", delta["depth ceiling"]), ("capture", psnr["capture"]),
                           ("aif", psnr["DFD-DPS"]), ("capture_ssim", ssim["capture"]), ("aif_ssim", ssim["DFD-DPS"]),
                           ("auc", auc)):
            totals.setdefault(key, []).append(float(value.mean()))
        low, high = runs[0][camera]["blur_px"]
        lines.append(
            f"| {camera} | {low:+.1f} … {high:+.1f} | {delta['constant'].mean():.3f} | {delta['classical'].mean():.3f} "
            f"| {delta['DFD-DPS'].mean():.3f} | {delta['depth ceiling'].mean():.3f} "
            f"| {delta['DFD-DPS'].mean() / delta['depth ceiling'].mean():.1%} "
            f"| {lead.mean():+.3f} ({runs_text(lead)}) | {over_constant.mean():+.3f} ({runs_text(over_constant)}) "
            f"| {psnr['capture'].mean():.2f} → {psnr['DFD-DPS'].mean():.2f} "
            f"({runs_text(psnr['DFD-DPS'] - psnr['capture'], 2)}) "
            f"| {ssim['capture'].mean():.3f} → {ssim['DFD-DPS'].mean():.3f} "
            f"({runs_text(ssim['DFD-DPS'] - ssim['capture'])}) | {' / '.join(f'{v:.3f}' for v in auc)} |")
    t = {key: float(np.mean(values)) for key, values in totals.items()}
    lines.append(
        f"| **mean over {len(cameras)} cameras** | | {t['constant']:.3f} | {t['classical']:.3f} | {t['dps']:.3f} "
        f"| {t['ceiling']:.3f} | {t['dps'] / t['ceiling']:.1%} | {t['dps'] - t['classical']:+.3f} "
        f"| {t['classical'] - t['constant']:+.3f} | {t['capture']:.2f} → {t['aif']:.2f} "
        f"| {t['capture_ssim']:.3f} → {t['aif_ssim']:.3f} | {t['auc']:.3f} |")
    return "\n".join(lines)


WRONG_DEPTH_METHODS = ("classical", "DFD-DPS", "depth ceiling")


def wrong_depth_table(runs: list[dict]) -> str:
    """Where each method's wrong depths go, per camera (means over ``runs``, the ``results_json`` of one or more
    seeds): δ, then the shares of textured pixels read with too small a blur, too large a blur and (banks that
    straddle focus) on the other side of focus (``metrics.wrong_depth_shares``; the four sum to 1)."""
    cameras = _same_cameras(runs, "wrong_depth_table")
    head = ("| camera | " + " | ".join(f"{m}: δ · blur too small · too large · other side" for m in WRONG_DEPTH_METHODS)
            + " |")
    lines = [head, "|---|" + "---|" * len(WRONG_DEPTH_METHODS)]
    totals: dict[str, list[np.ndarray]] = {}
    for camera in cameras:
        cells = []
        for method in WRONG_DEPTH_METHODS:
            values = np.array([[run[camera]["methods"][method].get(key, 0.0) for key in
                                ("tex_delta1", "tex_wrong_sharper", "tex_wrong_blurrier", "tex_wrong_side")]
                               for run in runs]).mean(axis=0)
            totals.setdefault(method, []).append(values)
            side = f"{values[3]:.2f}" if "tex_wrong_side" in runs[0][camera]["methods"][method] else "–"
            cells.append(f"{values[0]:.3f} · {values[1]:.2f} · {values[2]:.2f} · {side}")
        lines.append(f"| {camera} | " + " | ".join(cells) + " |")
    means = {m: np.mean(v, axis=0) for m, v in totals.items()}
    lines.append(f"| **mean over {len(cameras)} cameras** | " + " | ".join(
        f"{v[0]:.3f} · {v[1]:.2f} · {v[2]:.2f} · {v[3]:.2f}" for v in means.values()) + " |")
    return "\n".join(lines)


def photo_means_table(runs: list[dict]) -> str:
    """Per photo, the mean over every camera and run (``results_json`` with per-scene figures) of its scenes'
    textured share, δ per method, and DFD-DPS's image lead over the capture, with how many of its scenes fall below
    the capture in PSNR or SSIM: one photo can move every camera's mean."""
    rows: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for camera, entry in run.items():
            if "scenes" not in entry:
                raise ValueError(f"photo_means_table: camera {camera!r} has no per-scene figures (an older run)")
            for scene in entry["scenes"]:
                row = rows.setdefault(scene["scene"], {})
                psnr_lead = scene["DFD-DPS"]["aif_psnr"] - scene["capture"]["aif_psnr"]
                ssim_lead = scene["DFD-DPS"]["aif_ssim"] - scene["capture"]["aif_ssim"]
                values = {"share": scene["textured_share"], "psnr": psnr_lead, "ssim": ssim_lead,
                          "below": float(psnr_lead < 0 or ssim_lead < 0)}
                for method in DEPTH_ROWS:
                    values[method] = scene[method]["tex_delta1"]
                for key, value in values.items():
                    row.setdefault(key, []).append(value)
    head = ("| photo | scenes | textured share | constant δ | classical δ | DFD-DPS δ | depth ceiling δ "
            "| DFD-DPS − classical δ | DFD-DPS AIF − capture PSNR | DFD-DPS − capture SSIM "
            "| scenes below the capture |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for photo, row in rows.items():
        mean = {key: float(np.nanmean(values)) for key, values in row.items()}
        lines.append(
            f"| {photo} | {len(row['share'])} | {mean['share']:.0%} | {mean['constant']:.3f} | {mean['classical']:.3f} "
            f"| {mean['DFD-DPS']:.3f} | {mean['depth ceiling']:.3f} | {mean['DFD-DPS'] - mean['classical']:+.3f} "
            f"| {mean['psnr']:+.2f} | {mean['ssim']:+.3f} | {int(sum(row['below']))} |")
    return "\n".join(lines)


def save_worst_camera_figure(path: str | Path, results: list[CameraResult]) -> Path | None:
    """The camera where DFD-DPS is furthest below its depth ceiling: its worst scene, every output."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cadfd_ros.io.images import linear_to_srgb

    scored = [r for r in results if r.example]
    if not scored:
        return None
    worst = min(scored, key=lambda r: r.mean("DFD-DPS", "tex_delta1") / max(r.mean("depth ceiling", "tex_delta1"), 1e-6))
    scene, outputs = worst.example
    bank = worst.camera.psf_bank()
    near, far = float(bank.depths[0]), float(bank.depths[-1])
    fig, axes = plt.subplots(2, 4, figsize=(13, 6))
    panels = [(scene.capture, "capture", False), (scene.sharp, "true sharp", False),
              (outputs["classical"][1], "classical AIF", False), (outputs["DFD-DPS"][1], "DFD-DPS AIF", False),
              (scene.depth, "true depth", True), (outputs["classical"][0], "classical depth", True),
              (outputs["DFD-DPS"][0], "DFD-DPS depth", True), (None, "", False)]
    for ax, (image, title, is_depth) in zip(axes.flat, panels):
        ax.axis("off")
        if image is None:
            continue
        if is_depth:
            ax.imshow(image, cmap="turbo_r", vmin=near, vmax=far)
        else:
            ax.imshow(linear_to_srgb(np.clip(image, 0, 1)), cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"worst camera: {worst.camera.name} ({worst.blur_px[0]:+.1f} … {worst.blur_px[1]:+.1f} px), "
                 f"scene {scene.name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)
