"""The ``cadfd bench`` benchmark: methods x scenes -> metrics table and figures."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from cadfd_ros.bench.metrics import (depth_metrics, either_side_delta1, evaluation_mask, image_metrics, textured_mask,
                                     wrong_depth_shares)
from cadfd_ros.bench.scenes import Scene, make_scene
from cadfd_ros.optics.psf_bank import PSFBank
from cadfd_ros.pipeline import ReconstructionConfig, Reconstructor
from cadfd_ros.result import Reconstruction

Method = Callable[[Scene], Reconstruction]


@dataclass
class BenchRow:
    method: str
    scene: str
    metrics: dict[str, float] = field(default_factory=dict)


def constant_depth_method(bank: PSFBank) -> Method:
    """Baseline: the middle of the bank's range in inverse depth, and the capture as the image."""
    middle = 2.0 / (1.0 / bank.depths[0] + 1.0 / bank.depths[-1])

    def run(scene: Scene) -> Reconstruction:
        depth = np.full(scene.capture.shape[:2], middle, np.float32)
        return Reconstruction(depth, scene.capture.copy(), np.zeros_like(depth), "constant")

    return run


def solver_method(bank: PSFBank, config: ReconstructionConfig) -> Method:
    reconstructor = Reconstructor(bank, config)

    def run(scene: Scene) -> Reconstruction:
        result = reconstructor.reconstruct(scene.capture)
        if reconstructor.sampler is not None:
            # Speed against its floor: N network calls on the same input.
            floor = result.steps * reconstructor.sampler.network_seconds(scene.capture.shape, repeats=2, cached=False)
            result.timings["floor_ratio_total"] = result.timings["total"] / floor
            result.timings["floor_ratio_sampler"] = result.timings["dps"] / floor
        return result

    return run


def score(depth: np.ndarray | None, aif: np.ndarray | None, scene: Scene, bank: PSFBank) -> dict[str, float]:
    """Depth metrics on all and on textured pixels, and image metrics, with the border band excluded;
    a None depth or image is not scored."""
    border = evaluation_mask(scene.depth.shape, bank.half_size)
    out: dict[str, float] = {}
    if depth is not None:
        textured = border & textured_mask(scene.sharp)
        step = float(np.abs(np.diff(bank.inverse_depths)).mean())
        for prefix, mask in (("all", border), ("tex", textured)):
            for key, value in depth_metrics(depth, scene.depth, mask, step).items():
                out[f"{prefix}_{key}"] = value
        focus = float(bank.metadata["focus_distance_m"]) if bank.straddles_focus() else None
        if focus is not None:  # how much of the loss is the side of focus
            out["tex_delta1_either_side"] = either_side_delta1(depth, scene.depth, textured, focus)
        for key, value in wrong_depth_shares(depth, scene.depth, textured, bank.inverse_depths,
                                             bank.effective_diameters_px(), focus).items():
            out[f"tex_{key}"] = value
    if aif is not None:
        out.update({f"aif_{k}": v for k, v in image_metrics(aif, scene.sharp, border).items()})
    return out


def evaluate(result: Reconstruction, scene: Scene, bank: PSFBank, seconds: float) -> dict[str, float]:
    out = {"seconds": seconds}
    for key in ("floor_ratio_total", "floor_ratio_sampler"):
        if key in result.timings:
            out[key] = result.timings[key]
    out.update(score(result.depth, result.all_in_focus, scene, bank))
    return out


def run_bench(
    bank: PSFBank,
    methods: dict[str, Method],
    photos: tuple[str, ...],
    height: int,
    width: int,
    noise_sigma: float,
    seed: int = 0,
    progress: bool = True,
    repeats: int = 1,
    motion_px: int = 0,
) -> tuple[list[BenchRow], list[tuple[Scene, dict[str, Reconstruction]]]]:
    """Every method on every photo; ``repeats`` > 1 renders each photo again with new depth maps and
    noise (scene ``photo#r``, seed ``seed + r * len(photos) + i``), for leads with a usable error bar;
    ``motion_px``: the captures blurred by a sideways camera motion (``make_scene``)."""
    from tqdm import tqdm

    rows: list[BenchRow] = []
    examples = []
    scenes = [make_scene(photo, bank, height, width, noise_sigma, seed=seed + r * len(photos) + i,
                         name=f"{photo}#{r}" if repeats > 1 else None, motion_px=motion_px)
              for r in range(repeats) for i, photo in enumerate(photos)]
    for scene in tqdm(scenes, desc="scenes", disable=not progress):
        outputs = {}
        for name, method in methods.items():
            start = time.perf_counter()
            result = method(scene)
            seconds = time.perf_counter() - start
            outputs[name] = result
            rows.append(BenchRow(name, scene.name, evaluate(result, scene, bank, seconds)))
        examples.append((scene, outputs))
    return rows, examples


SUMMARY_COLUMNS = (
    ("tex_abs_rel", "AbsRel tex", "{:.3f}"),
    ("tex_rmse", "RMSE tex [m]", "{:.3f}"),
    ("tex_delta1", "δ<1.25 tex", "{:.3f}"),
    ("all_abs_rel", "AbsRel all", "{:.3f}"),
    ("all_rmse", "RMSE all [m]", "{:.3f}"),
    ("all_delta1", "δ<1.25 all", "{:.3f}"),
    ("tex_layer_error", "layer err tex", "{:.2f}"),
    ("aif_psnr", "AIF PSNR [dB]", "{:.2f}"),
    ("aif_ssim", "AIF SSIM", "{:.3f}"),
    ("seconds", "s/frame", "{:.2f}"),
    ("floor_ratio_sampler", "sampler / (N x net)", "{:.2f}"),
    ("floor_ratio_total", "total / (N x net)", "{:.2f}"),
)


def summarise(rows: list[BenchRow]) -> dict[str, dict[str, float]]:
    """Mean of every metric per method, in first-seen order."""
    summary: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(row.method for row in rows):
        chosen = [row.metrics for row in rows if row.method == name]
        summary[name] = {key: float(np.nanmean([m[key] for m in chosen])) for key in chosen[0]}
    return summary


LEAD_METRICS = (("tex_delta1", "δ<1.25 tex", "{:+.3f}"), ("aif_psnr", "AIF PSNR [dB]", "{:+.2f}"))


def paired_leads(rows: list[BenchRow], reference: str = "classical") -> dict[str, dict[str, float]]:
    """Per method, the mean per-scene difference to ``reference`` of each lead metric, its standard
    error (scenes differ far more than methods do, so only paired differences are comparable) and
    the number of scenes the method wins."""
    base = {row.scene: row.metrics for row in rows if row.method == reference}
    leads: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(row.method for row in rows if row.method != reference):
        paired = [(row.metrics, base[row.scene]) for row in rows if row.method == name and row.scene in base]
        if not paired:
            continue
        out = {"scenes": float(len(paired))}
        for key, _, _ in LEAD_METRICS:
            diff = np.array([m[key] - b[key] for m, b in paired])
            out[f"lead_{key}"] = float(diff.mean())
            out[f"lead_{key}_se"] = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("nan")
            out[f"wins_{key}"] = float((diff > 0).sum())
        leads[name] = out
    return leads


def markdown_table(rows: list[BenchRow], per_scene: bool = False) -> str:
    header = "| method | " + " | ".join(title for _, title, _ in SUMMARY_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(SUMMARY_COLUMNS) + 1)]
    for name, metrics in summarise(rows).items():
        cells = [fmt.format(metrics.get(key, float("nan"))) for key, _, fmt in SUMMARY_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    leads = paired_leads(rows)
    if leads:  # paired per scene: method minus classical
        titles = " | ".join(f"{title} ± s.e. | wins" for _, title, _ in LEAD_METRICS)
        lines += ["", f"| method − classical | scenes | {titles} |", "|---|---|" + "---|---|" * len(LEAD_METRICS)]
        for name, lead in leads.items():
            cells = [f"{fmt.format(lead[f'lead_{key}'])} ± {fmt.replace('+', '').format(lead[f'lead_{key}_se'])} | "
                     f"{lead[f'wins_{key}']:.0f}" for key, _, fmt in LEAD_METRICS]
            lines.append(f"| {name} | {lead['scenes']:.0f} | " + " | ".join(cells) + " |")
    if per_scene:
        lines += ["", "| method | scene | δ<1.25 tex | AbsRel tex | AIF PSNR |", "|---|---|---|---|---|"]
        for row in rows:
            m = row.metrics
            lines.append(f"| {row.method} | {row.scene} | {m['tex_delta1']:.3f} | {m['tex_abs_rel']:.3f} | {m['aif_psnr']:.2f} |")
    return "\n".join(lines)


def save_examples_figure(path: str | Path, examples: list[tuple[Scene, dict[str, Reconstruction]]], bank: PSFBank,
                         max_scenes: int = 3) -> Path:
    """Rows of scenes: capture, then each method's depth and all-in-focus, then the truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cadfd_ros.io.images import linear_to_srgb

    examples = examples[:max_scenes]
    names = list(examples[0][1])
    cols = 2 + 2 * len(names) + 1
    fig, axes = plt.subplots(len(examples), cols, figsize=(2.2 * cols, 2.0 * len(examples)), squeeze=False)
    near, far = float(bank.depths[0]), float(bank.depths[-1])

    def show(ax, image, title, depth=False):
        if depth:
            ax.imshow(image, cmap="turbo_r", vmin=near, vmax=far)
        else:
            ax.imshow(linear_to_srgb(image), cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")

    for r, (scene, outputs) in enumerate(examples):
        show(axes[r, 0], scene.capture, f"{scene.name}: capture")
        show(axes[r, 1], scene.depth, "true depth", depth=True)
        for i, name in enumerate(names):
            show(axes[r, 2 + 2 * i], outputs[name].depth, f"{name} depth", depth=True)
            show(axes[r, 3 + 2 * i], outputs[name].all_in_focus, f"{name} AIF")
        show(axes[r, cols - 1], scene.sharp, "true AIF")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


CURVE_PANELS = (("tex_abs_rel", "AbsRel, textured (lower is better)"),
                ("tex_delta1", "δ<1.25, textured"), ("aif_psnr", "all-in-focus PSNR [dB]"))


def save_steps_curve(path: str | Path, summary: dict[str, dict[str, float]], title: str = "") -> Path:
    """Quality against network evaluations for every ``method@N`` row; other methods as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[tuple[int, dict[str, float]]]] = {}
    for name, metrics in summary.items():
        if "@" in name:
            method, steps = name.rsplit("@", 1)
            curves.setdefault(method, []).append((int(steps), metrics))
    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(4.2 * len(CURVE_PANELS), 3.4))
    for ax, (key, label) in zip(axes, CURVE_PANELS):
        for method, points in curves.items():
            points.sort()
            ax.plot([n for n, _ in points], [m[key] for _, m in points], "o-", label=method)
        for i, (name, metrics) in enumerate((n, m) for n, m in summary.items() if "@" not in n):
            ax.axhline(metrics[key], color=f"C{len(curves) + i}", linestyle="--", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations (--steps)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
