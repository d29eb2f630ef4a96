"""``cadfd bench --sequence``: warm start across frames (temporal_warm_start) against a cold start on every
frame, on synthetic videos.

A video is a run of segments. Each segment is one bench scene (a photo over procedural depth, as
``cadfd bench`` renders it) on a canvas larger than the frame, seen through a crop that moves slowly:
a constant translation of ``max_shift_px`` or less per frame in a random direction and a rotation of
``max_rotation_deg`` or less per frame. The true all-in-focus image and depth map are warped per frame
(bilinear for the image, nearest for depth so occlusion edges stay sharp) and every capture is rendered
with the occlusion-aware layered model plus fresh noise. A new segment (a different photo and depth
map) starts every ``cut_every`` frames: a scene cut.

Both arms run the same solver config (method dps); the cold arm reconstructs each frame on its own,
the warm arm keeps the previous frame's estimate. The cold arm runs on every ``cold_every``-th frame and
on the first three frames after every cut (a cold frame does not depend on the frames before it, so
sub-sampling it changes no number, only the time the bench takes); comparisons are paired per frame.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from cadfd_ros.bench.runner import score
from cadfd_ros.bench.scenes import Scene, fit_photo, load_photo, procedural_depth
from cadfd_ros.errors import CadfdError
from cadfd_ros.forward.render import render_occlusion_aware
from cadfd_ros.optics.psf_bank import PSFBank
from cadfd_ros.pipeline import ReconstructionConfig, Reconstructor

# The issue's goals for the warm start (issue 14): quality within these of the cold start, at most this
# share of its network evaluations, and back on track within this many frames of a cut.
GOAL_DELTA = 0.02
GOAL_PSNR_DB = 0.3
GOAL_NFE_SHARE = 1.0 / 3.0
GOAL_RECOVERY_FRAMES = 2


@dataclass(frozen=True)
class SequenceConfig:
    frames: int = 300
    cut_every: int = 100  # a new scene (photo and depth map) every this many frames
    height: int = 120
    width: int = 160
    noise_sigma: float = 0.01
    max_shift_px: float = 1.0  # translation per frame, drawn per segment in [0.25, 1] x this
    max_rotation_deg: float = 0.15  # rotation per frame, drawn per segment in [-1, 1] x this
    cold_every: int = 1  # the cold arm on every n-th frame (and the three after each cut)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise CadfdError(f"--sequence-frames must be at least 2, got {self.frames}")
        if self.cut_every < 2:
            raise CadfdError(f"--sequence-cut-every must be at least 2, got {self.cut_every}")
        if self.cold_every < 1:
            raise CadfdError(f"--sequence-cold-every must be at least 1, got {self.cold_every}")
        if self.max_shift_px < 0 or self.max_rotation_deg < 0:
            raise CadfdError("sequence motion: shift and rotation per frame must be >= 0")

    def cut_frames(self) -> list[int]:
        """The first frame of every segment after the first."""
        return list(range(self.cut_every, self.frames, self.cut_every))

    def runs_cold(self, index: int) -> bool:
        since_cut = index % self.cut_every
        return index % self.cold_every == 0 or since_cut < 3


@dataclass(frozen=True)
class SegmentMotion:
    velocity: tuple[float, float]  # px per frame (x, y)
    omega_deg: float  # degrees per frame


def _as_rgb(image: np.ndarray) -> np.ndarray:
    # one channel count for the whole video: a change of channels would reset the warm start
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


def make_sequence(bank: PSFBank, photos: tuple[str, ...], config: SequenceConfig) -> Iterator[tuple[int, int, Scene]]:
    """(frame index, segment, scene) for every frame, rendered lazily (one canvas in memory at a time)."""
    import cv2

    if not photos:
        raise CadfdError("sequence bench: no photos")
    rng = np.random.default_rng(config.seed)
    height, width = config.height, config.width
    near, far = float(bank.depths[0]), float(bank.depths[-1])
    for segment, first in enumerate(range(0, config.frames, config.cut_every)):
        length = min(config.cut_every, config.frames - first)
        photo = photos[segment % len(photos)]
        speed = config.max_shift_px * rng.uniform(0.25, 1.0)
        angle = rng.uniform(0, 2 * math.pi)
        motion = SegmentMotion((speed * math.cos(angle), speed * math.sin(angle)),
                               config.max_rotation_deg * rng.uniform(-1.0, 1.0))
        # canvas: the frame plus the path of its centre plus what the rotation swings in, plus a margin
        swing = 0.5 * math.hypot(height, width) * math.radians(abs(motion.omega_deg) * length)
        margin = int(math.ceil(0.5 * speed * length + swing + 0.5 * abs(height - width))) + 8
        canvas_h, canvas_w = height + 2 * margin, width + 2 * margin
        sharp_canvas = fit_photo(_as_rgb(load_photo(photo)), canvas_h, canvas_w)
        depth_canvas = procedural_depth(canvas_h, canvas_w, near, far, rng, occluders=6)
        centre = np.array([(canvas_w - 1) / 2.0, (canvas_h - 1) / 2.0])
        velocity = np.array(motion.velocity)
        frame_centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
        for k in range(length):
            theta = math.radians(motion.omega_deg * k)
            rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
            position = centre + velocity * (k - (length - 1) / 2.0)  # centred path: stays on the canvas
            # frame pixel p -> canvas point R (p - frame centre) + position (cv2: WARP_INVERSE_MAP)
            matrix = np.hstack([rotation, (position - rotation @ frame_centre)[:, None]]).astype(np.float64)
            flags = cv2.WARP_INVERSE_MAP
            sharp = cv2.warpAffine(sharp_canvas, matrix, (width, height), flags=flags | cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REFLECT)
            depth = cv2.warpAffine(depth_canvas, matrix, (width, height), flags=flags | cv2.INTER_NEAREST,
                                   borderMode=cv2.BORDER_REFLECT)
            sharp = np.clip(sharp, 0, 1).astype(np.float32)
            clean = render_occlusion_aware(sharp, depth.astype(np.float32), bank)
            noisy = clean + rng.normal(0.0, config.noise_sigma, size=clean.shape).astype(np.float32)
            scene = Scene(f"{photo}[{first + k}]", sharp, depth.astype(np.float32),
                          np.clip(noisy, 0, 1).astype(np.float32), config.noise_sigma)
            yield first + k, segment, scene


@dataclass
class FrameRow:
    frame: int
    segment: int
    photo: str
    arm: str  # cold | warm
    start: str  # what the sampler started from: classical | warm | noise
    nfe: int  # network evaluations
    warm_data_term: float  # NaN where no warm start was checked
    seconds: float
    tex_delta1: float
    all_delta1: float
    tex_abs_rel: float
    aif_psnr: float
    aif_ssim: float


def run_sequence(bank: PSFBank, photos: tuple[str, ...], config: SequenceConfig, solver: ReconstructionConfig,
                 progress: bool = True, partial_csv: str | Path | None = None,
                 warm_refresh_every: int | None = None) -> list[FrameRow]:
    """Both arms over the whole video, frame by frame; ``partial_csv`` gets every row as it is measured, so
    a run stopped part-way (a long video on a shared CPU) keeps what it measured. ``warm_refresh_every``
    overrides the warm arm's periodic cold start (SamplerParams.warm_refresh_every)."""
    from dataclasses import replace

    from tqdm import tqdm

    if solver.method != "dps":
        raise CadfdError("sequence bench: the warm start is a DFD-DPS feature; use method dps")
    warm = Reconstructor(bank, replace(solver, temporal_warm_start=True))
    cold = Reconstructor(bank, replace(solver, temporal_warm_start=False))
    cold.sampler.prior = warm.sampler.prior  # one prior in memory
    if warm_refresh_every is not None:
        warm.sampler.params = replace(warm.sampler.params, warm_refresh_every=warm_refresh_every)
    rows: list[FrameRow] = []
    partial = None
    if partial_csv is not None:
        Path(partial_csv).parent.mkdir(parents=True, exist_ok=True)
        partial = open(partial_csv, "w", newline="")
        writer = csv.DictWriter(partial, fieldnames=list(FrameRow.__dataclass_fields__))
        writer.writeheader()
    for index, segment, scene in tqdm(make_sequence(bank, photos, config), total=config.frames, desc="frames",
                                      disable=not progress):
        photo = scene.name.split("[", 1)[0]
        arms = [("warm", warm)] + ([("cold", cold)] if config.runs_cold(index) else [])
        for arm, reconstructor in arms:
            began = time.perf_counter()
            result = reconstructor.reconstruct(scene.capture)
            seconds = time.perf_counter() - began
            m = score(result.depth, result.all_in_focus, scene, bank)
            rows.append(FrameRow(index, segment, photo, arm, result.start, int(result.steps),
                                 float(result.warm_data_term), seconds, m["tex_delta1"], m["all_delta1"],
                                 m["tex_abs_rel"], m["aif_psnr"], m["aif_ssim"]))
            if partial is not None:
                writer.writerow(asdict(rows[-1]))
                partial.flush()
    if partial is not None:
        partial.close()
    return rows


def _paired(rows: list[FrameRow]) -> list[tuple[FrameRow, FrameRow]]:
    cold = {r.frame: r for r in rows if r.arm == "cold"}
    return [(r, cold[r.frame]) for r in rows if r.arm == "warm" and r.frame in cold]


def _warm_chains(rows: list[FrameRow]) -> dict[int, int]:
    """frame -> the index of its warm-arm chain: a chain begins at every frame the warm arm started cold."""
    chains, index = {}, -1
    for r in sorted((r for r in rows if r.arm == "warm"), key=lambda r: r.frame):
        index += r.start != "warm"
        chains[r.frame] = max(index, 0)
    return chains


def chain_standard_error(values: list[float], chains: list[int]) -> float:
    """Standard error of the mean of ``values`` with the frames of one warm chain as one block: the spread of
    the chains' means over the root of their number (NaN with fewer than two chains). NaN values are left out."""
    blocks: dict[int, list[float]] = {}
    for value, key in zip(values, chains):
        if math.isfinite(value):  # a frame without textured pixels has no delta
            blocks.setdefault(key, []).append(value)
    means = np.array([np.mean(v) for v in blocks.values()])
    return float(np.std(means, ddof=1) / math.sqrt(len(means))) if len(means) > 1 else float("nan")


def _nan_mean(values: np.ndarray) -> float:
    """Mean over the finite values (a frame without textured pixels has a NaN delta); NaN when there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _nan_se(values: np.ndarray) -> float:
    """Per-frame standard error of ``_nan_mean``, over the finite values only."""
    finite = values[np.isfinite(values)]
    return float(finite.std(ddof=1) / math.sqrt(finite.size)) if finite.size > 1 else float("nan")


def _delta_within(warm: FrameRow, cold: FrameRow) -> bool:
    """The warm frame's delta within the goal of the cold one's; a frame without textured pixels has none to
    miss, so it passes (its PSNR is still judged)."""
    if not (math.isfinite(warm.tex_delta1) and math.isfinite(cold.tex_delta1)):
        return True
    return warm.tex_delta1 >= cold.tex_delta1 - GOAL_DELTA


def summarise_sequence(rows: list[FrameRow], config: SequenceConfig) -> dict:
    """Per arm means, the paired warm - cold differences, the recovery after each cut, drift and the goals."""
    out: dict = {"config": asdict(config), "arms": {}}
    for arm in ("cold", "warm"):
        chosen = [r for r in rows if r.arm == arm]
        if not chosen:
            continue
        out["arms"][arm] = {
            "frames": len(chosen),
            "tex_delta1": float(np.nanmean([r.tex_delta1 for r in chosen])),
            "all_delta1": float(np.nanmean([r.all_delta1 for r in chosen])),
            "aif_psnr": float(np.nanmean([r.aif_psnr for r in chosen])),
            "nfe_per_frame": float(np.mean([r.nfe for r in chosen])),
            "seconds_mean": float(np.mean([r.seconds for r in chosen])),
            "seconds_median": float(np.median([r.seconds for r in chosen])),
            "starts": {s: sum(r.start == s for r in chosen) for s in sorted({r.start for r in chosen})},
        }
    warm_rows = [r for r in rows if r.arm == "warm"]
    warm_only = [r for r in warm_rows if r.start == "warm"]
    if warm_only:
        out["arms"]["warm"]["warm_frames_seconds_median"] = float(np.median([r.seconds for r in warm_only]))
        terms = [r.warm_data_term for r in warm_only]
        out["arms"]["warm"]["warm_data_term_max"] = float(np.max(terms))
    paired = _paired(rows)
    if paired:
        d_delta = np.array([w.tex_delta1 - c.tex_delta1 for w, c in paired])
        d_psnr = np.array([w.aif_psnr - c.aif_psnr for w, c in paired])
        out["paired"] = {"frames": len(paired), "delta_diff": _nan_mean(d_delta), "delta_diff_se": _nan_se(d_delta),
                         "psnr_diff_db": _nan_mean(d_psnr), "psnr_diff_se": _nan_se(d_psnr)}
    by_frame = {(r.arm, r.frame): r for r in rows}
    recoveries = []
    for cut in config.cut_frames():
        recovered = None
        for k in range(3):
            w, c = by_frame.get(("warm", cut + k)), by_frame.get(("cold", cut + k))
            if w is None or c is None:
                break
            if _delta_within(w, c) and w.aif_psnr >= c.aif_psnr - GOAL_PSNR_DB:
                recovered = k
                break
        w0 = by_frame.get(("warm", cut))
        recoveries.append({"cut": cut, "start_at_cut": w0.start if w0 else "",
                           "data_term_at_cut": w0.warm_data_term if w0 else float("nan"),
                           "frames_to_recover": recovered})
    out["cuts"] = recoveries
    # drift: the paired difference over the first and the last third of every segment, with a standard error
    # over the warm chains in it (frames of one chain share their start, so they are not independent)
    drift = []
    chain = _warm_chains(rows)
    for segment in sorted({r.segment for r in rows}):
        seg = [(w, c) for w, c in paired if w.segment == segment]
        if len(seg) < 6:
            continue
        third = len(seg) // 3
        first, last = seg[:third], seg[-third:]
        entry = {"segment": segment, "photo": seg[0][0].photo}
        for name, part in (("first", first), ("last", last)):
            for key, diff in (("delta_diff", lambda w, c: w.tex_delta1 - c.tex_delta1),
                              ("psnr_diff", lambda w, c: w.aif_psnr - c.aif_psnr)):
                values = [diff(w, c) for w, c in part]
                entry[f"{key}_{name}"] = _nan_mean(np.array(values))
                entry[f"{key}_{name}_se"] = chain_standard_error(values, [chain[w.frame] for w, _ in part])
        drift.append(entry)
    out["drift"] = drift
    if "paired" in out and "cold" in out["arms"]:
        # a segment whose last third has no textured pixels (a smooth photo) has no delta to drift in
        worst_last = min([d["delta_diff_last"] for d in drift if math.isfinite(d["delta_diff_last"])], default=0.0)
        worst_last_psnr = min([d["psnr_diff_last"] for d in drift], default=0.0)
        cold_nfe = max(r.nfe for r in rows if r.arm == "cold")
        out["goals"] = {
            "delta_within": out["paired"]["delta_diff"] >= -GOAL_DELTA,
            "psnr_within": out["paired"]["psnr_diff_db"] >= -GOAL_PSNR_DB,
            "nfe_share": out["arms"]["warm"]["nfe_per_frame"] / cold_nfe,
            "nfe_within": out["arms"]["warm"]["nfe_per_frame"] <= GOAL_NFE_SHARE * cold_nfe + 1e-9,
            "recovers": all(c["frames_to_recover"] is not None and c["frames_to_recover"] <= GOAL_RECOVERY_FRAMES
                            for c in recoveries),
            "no_drift": worst_last >= -GOAL_DELTA and worst_last_psnr >= -GOAL_PSNR_DB,
        }
    return out


def _fmt(value: float, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def sequence_markdown(summary: dict, header: str) -> str:
    arms = summary["arms"]
    lines = [header, "", "| arm | frames | δ<1.25 tex | δ<1.25 all | AIF PSNR [dB] | NFE / frame | s / frame (mean) | "
             "s / frame (median) | starts |", "|---|---|---|---|---|---|---|---|---|"]
    for arm, m in arms.items():
        starts = ", ".join(f"{k} {v}" for k, v in m["starts"].items())
        lines.append(f"| {arm} | {m['frames']} | {m['tex_delta1']:.3f} | {m['all_delta1']:.3f} | {m['aif_psnr']:.2f} | "
                     f"{m['nfe_per_frame']:.2f} | {m['seconds_mean']:.2f} | {m['seconds_median']:.2f} | {starts} |")
    if "paired" in summary:
        p = summary["paired"]
        lines += ["", f"Paired over {p['frames']} frames (warm − cold): δ<1.25 tex {p['delta_diff']:+.4f} ± "
                      f"{_fmt(p['delta_diff_se'], '.4f')}, AIF PSNR {p['psnr_diff_db']:+.3f} ± {_fmt(p['psnr_diff_se'], '.3f')} dB."]
    if "warm_frames_seconds_median" in arms.get("warm", {}):
        lines.append(f"Warm-started frames: median {arms['warm']['warm_frames_seconds_median']:.2f} s; largest "
                     f"accepted warm data term {arms['warm']['warm_data_term_max']:.2f}.")
    if summary["cuts"]:
        lines += ["", "| cut at frame | start used there | warm data term there | frames to recover |", "|---|---|---|---|"]
        for c in summary["cuts"]:
            lines.append(f"| {c['cut']} | {c['start_at_cut']} | {_fmt(c['data_term_at_cut'], '.1f')} | "
                         f"{'not within 2' if c['frames_to_recover'] is None else c['frames_to_recover']} |")
    if summary["drift"]:
        lines += ["", "| segment | photo | δ diff, first third | δ diff, last third | PSNR diff, first third | "
                      "PSNR diff, last third |", "|---|---|---|---|---|---|"]
        for d in summary["drift"]:
            lines.append(f"| {d['segment']} | {d['photo']} | {_fmt(d['delta_diff_first'], '+.4f')} ± "
                         f"{_fmt(d['delta_diff_first_se'], '.4f')} | {_fmt(d['delta_diff_last'], '+.4f')} ± "
                         f"{_fmt(d['delta_diff_last_se'], '.4f')} | {d['psnr_diff_first']:+.3f} ± "
                         f"{_fmt(d['psnr_diff_first_se'], '.3f')} | {d['psnr_diff_last']:+.3f} ± "
                         f"{_fmt(d['psnr_diff_last_se'], '.3f')} |")
        lines.append("(± one standard error over the warm chains in each third: a chain's frames share its start. "
                     "n/a: no textured pixels, so no δ.)")
    if "goals" in summary:
        g = summary["goals"]
        lines += ["", f"Goals (issue 14): δ within {GOAL_DELTA}: {'met' if g['delta_within'] else 'NOT met'}; "
                      f"PSNR within {GOAL_PSNR_DB} dB: {'met' if g['psnr_within'] else 'NOT met'}; NFE share "
                      f"{g['nfe_share']:.3f} (≤ 1/3: {'met' if g['nfe_within'] else 'NOT met'}); recovery within "
                      f"{GOAL_RECOVERY_FRAMES} frames of every cut: {'met' if g['recovers'] else 'NOT met'}; no drift: "
                      f"{'met' if g['no_drift'] else 'NOT met'}."]
    return "\n".join(lines)


def save_sequence_figure(path: str | Path, rows: list[FrameRow], config: SequenceConfig) -> Path:
    """δ<1.25, AIF PSNR, network evaluations and latency per frame, both arms, cuts marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("tex_delta1", "δ<1.25, textured"), ("aif_psnr", "AIF PSNR [dB]"), ("nfe", "network evaluations"),
              ("seconds", "seconds / frame"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 8.5), sharex=True)
    for ax, (key, label) in zip(axes, panels):
        for arm, style in (("cold", "o"), ("warm", "-")):
            chosen = [r for r in rows if r.arm == arm]
            ax.plot([r.frame for r in chosen], [getattr(r, key) for r in chosen], style, ms=2.5, lw=1, label=arm)
        for cut in config.cut_frames():
            ax.axvline(cut, color="0.6", lw=0.8, ls="--")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[-1].set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def write_sequence(out_dir: str | Path, rows: list[FrameRow], summary: dict, header: str,
                   config: SequenceConfig, figure: bool = True) -> list[str]:
    """sequence.csv (per frame and arm), sequence.json (the summary), sequence.md and sequence.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sequence.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(FrameRow.__dataclass_fields__))
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))
    (out / "sequence.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "sequence.md").write_text(sequence_markdown(summary, header) + "\n")
    written = ["sequence.csv", "sequence.json", "sequence.md"]
    if figure:
        save_sequence_figure(out / "sequence.png", rows, config)
        written.append("sequence.png")
    return written
