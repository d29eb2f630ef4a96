"""``cadfd bench``: synthetic scenes from bundled photos with procedural depth."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from cadfd_ros.bench.scenes import TEST_PHOTOS
    from cadfd_ros.params import SOLVER, add_cli_arguments

    parser = subparsers.add_parser("bench", help="depth and all-in-focus quality and speed on synthetic scenes")
    parser.add_argument("--psf-bank", type=Path, default=None, help="PSF bank .npz (default: bundled)")
    parser.add_argument("--mask", type=Path, default=None,
                        help="aperture pattern: bench a bank synthesised with the default camera from it")
    parser.add_argument("--methods", default="constant,classical",
                        help="comma list of: constant, classical, dps, dps:SAMPLER (default: constant,classical)")
    parser.add_argument("--photos", default=",".join(TEST_PHOTOS), help="scikit-image photo names")
    parser.add_argument("--size", default="240x320", help="HEIGHTxWIDTH of each scene")
    parser.add_argument("--noise", type=float, default=0.01, help="capture noise sigma of the scenes (linear units)")
    parser.add_argument("--motion-blur", type=int, default=0, metavar="PX",
                        help="blur every capture (not the scene) by a sideways camera motion of PX pixels during the "
                             "exposure, before the noise: the default and --cameras benches (default: 0, none)")
    parser.add_argument("--measured-depth", action="store_true",
                        help="--cameras: render each photo over its own measured geometry (the Middlebury stereo "
                             "ground truth of stereo_motorcycle) instead of procedural planes and occluders")
    parser.add_argument("--steps-curve", default=None, metavar="N1,N2,...",
                        help="run every dps method at each of these step counts and plot quality against steps "
                             "(steps_curve.png), with classical and constant as references")
    parser.add_argument("--repeats", type=int, default=1,
                        help="render every photo this many times with new depth maps and noise: more scenes, "
                             "a smaller standard error on the leads over classical")
    parser.add_argument("--cameras", nargs="?", const="default", default=None, metavar="FILE",
                        help="camera-matrix bench: every camera of FILE (default: config/cameras.toml; 'heldout': "
                             "config/cameras_heldout.toml, designs no default was chosen on), per camera, with "
                             "ceilings; --photos is then a split of that file (tuning or heldout)")
    parser.add_argument("--only", default=None, metavar="NAME,...", help="with --cameras: only these cameras")
    parser.add_argument("--speed", action="store_true",
                        help="speed bench: seconds per frame, network_s (time inside the prior), overhead "
                             "(total / network_s) and peak memory per size, channels and step count (DFD-DPS)")
    parser.add_argument("--speed-sizes", default="160x120,320x240,640x480", metavar="WxH,...",
                        help="with --speed: frame sizes (default: 160x120,320x240,640x480)")
    parser.add_argument("--speed-steps", default="1,2,4,8,20", metavar="N,...",
                        help="with --speed: step counts (default: 1,2,4,8,20)")
    parser.add_argument("--speed-channels", default="mono,rgb", help="with --speed: mono, rgb or both")
    parser.add_argument("--speed-repeats", type=int, default=2,
                        help="with --speed: timed frames per row after one warm-up frame (median reported)")
    parser.add_argument("--sequence", action="store_true",
                        help="sequence bench: warm start across frames (temporal_warm_start) against a cold start on "
                             "every frame, on slowly moving synthetic videos with scene cuts (method dps); --photos is "
                             "then a split of config/cameras.toml (tuning or heldout, default heldout) or a list")
    parser.add_argument("--sequence-frames", type=int, default=300, help="with --sequence: frames (default: 300)")
    parser.add_argument("--sequence-cut-every", type=int, default=100,
                        help="with --sequence: a cut to the next photo every N frames (default: 100)")
    parser.add_argument("--sequence-size", default="120x160", help="with --sequence: HEIGHTxWIDTH (default: 120x160)")
    parser.add_argument("--sequence-cold-every", type=int, default=1,
                        help="with --sequence: run the cold reference on every N-th frame (and the 3 after each cut); "
                             "paired numbers use those frames (default: 1, every frame)")
    parser.add_argument("--sequence-warm-refresh", type=int, default=None,
                        help="with --sequence: the warm arm starts cold every N frames (SamplerParams."
                             "warm_refresh_every; default: the sampler's, 0 = never)")
    parser.add_argument("--sequence-shift", type=float, default=1.0,
                        help="with --sequence: largest translation per frame in px (default: 1.0)")
    parser.add_argument("--sequence-rotation", type=float, default=0.15,
                        help="with --sequence: largest rotation per frame in degrees (default: 0.15)")
    parser.add_argument("--out-dir", type=Path, default=Path("out/bench"))
    # the solver flags of cadfd reconstruct (the seed also draws the scenes); --methods picks method and sampler
    add_cli_arguments(parser, (SOLVER,), skip=("method", "sampler"))
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cadfd_ros.errors import CadfdError

    if args.motion_blur < 0:
        raise CadfdError(f"--motion-blur must be >= 0 px, got {args.motion_blur}")
    if args.measured_depth and not args.cameras:
        raise CadfdError("--measured-depth applies to the --cameras bench only")
    if args.only and not args.cameras:
        raise CadfdError("--only applies to the --cameras bench only")
    if args.motion_blur and (args.speed or args.sequence):
        raise CadfdError("--motion-blur applies to the default and --cameras benches, not to --speed or --sequence")
    if args.speed:
        return _run_speed(args)
    if args.sequence:
        return _run_sequence(args)
    if args.cameras is not None:
        return _run_cameras(args)
    from cadfd_ros.bench.runner import constant_depth_method, markdown_table, run_bench, save_examples_figure, \
        paired_leads, save_steps_curve, solver_method, summarise
    from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank
    from cadfd_ros.commands.reconstruct import config_from_args

    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise CadfdError(f"--size must look like 240x320, got {args.size!r}") from None
    if args.mask is not None:
        from cadfd_ros.optics.masks import load_pattern
        from cadfd_ros.optics.thin_lens import synthesize_psf_bank

        bank = synthesize_psf_bank(load_pattern(args.mask))
        bank = type(bank)(bank.psfs, bank.depths, bank.metadata, source=f"default camera + {args.mask}")
    else:
        bank = load_psf_bank(args.psf_bank or default_psf_bank_path())
    if min(height, width) < 2 * bank.kernel_size:  # the solvers' own limit, before any scene is rendered
        raise CadfdError(f"--size {args.size}: too small for the {bank.kernel_size}x{bank.kernel_size} PSFs "
                         f"(need at least {2 * bank.kernel_size} px per side)")
    if not 0 <= args.noise < 1:
        raise CadfdError(f"--noise {args.noise}: the capture noise sigma must be in [0, 1)")
    curve_steps: list[int] = []
    if args.steps_curve:
        try:
            curve_steps = sorted({int(v) for v in args.steps_curve.split(",") if v.strip()})
        except ValueError:
            raise CadfdError(f"--steps-curve must be a comma list of integers, got {args.steps_curve!r}") from None
        if not curve_steps or not 1 <= curve_steps[0] <= curve_steps[-1] <= 1000:
            raise CadfdError(f"--steps-curve: step counts must be in [1, 1000], got {args.steps_curve!r}")
    methods = {}
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        if name == "constant":
            methods[name] = constant_depth_method(bank)
        elif name == "classical":
            methods[name] = solver_method(bank, config_from_args(args, method="classical"))
        elif name.startswith("dps"):
            sampler = name.split(":", 1)[1] if ":" in name else "auto"
            for steps in curve_steps or [args.steps]:
                config = config_from_args(args, method="dps", sampler=sampler, steps=steps)
                methods[f"{name}@{steps}" if curve_steps else name] = solver_method(bank, config)
        else:
            raise CadfdError(f"unknown method {name!r} in --methods")
    photos = tuple(p.strip() for p in args.photos.split(",") if p.strip())
    if args.repeats < 1:
        raise CadfdError(f"--repeats must be at least 1, got {args.repeats}")
    args.out_dir.mkdir(parents=True, exist_ok=True)  # an output under a file fails here, not after the run
    rows, examples = run_bench(bank, methods, photos, height, width, args.noise, args.seed, repeats=args.repeats,
                               motion_px=args.motion_blur)
    table = markdown_table(rows, per_scene=True)
    repeated = f" x {args.repeats} depth maps each (seed {args.seed})" if args.repeats > 1 else f" (seed {args.seed})"
    motion = f", captures blurred by a {args.motion_blur} px sideways motion" if args.motion_blur else ""
    header = (f"Scenes: {', '.join(photos)}{repeated} at {width}x{height}, noise sigma {args.noise}{motion}, "
              f"bank {bank.source}; textured = sharp-image gradient energy > 0.02; border band of {bank.half_size} px "
              f"excluded.\n\n")
    (args.out_dir / "bench.md").write_text(header + table + "\n")
    summary = summarise(rows)
    for name, lead in paired_leads(rows).items():
        summary[name].update(lead)
    (args.out_dir / "bench.json").write_text(json.dumps(summary, indent=2) + "\n")
    save_examples_figure(args.out_dir / "examples.png", examples, bank)
    written = "bench.md, bench.json, examples.png"
    if curve_steps:
        save_steps_curve(args.out_dir / "steps_curve.png", summary, header.split(";")[0])
        written += ", steps_curve.png"
    print(header + table)
    print(f"\nwrote {args.out_dir}/{written}")
    return 0


def _run_cameras(args: argparse.Namespace) -> int:
    from cadfd_ros.bench import camera_matrix as cm
    from cadfd_ros.bench.scenes import TEST_PHOTOS
    from cadfd_ros.commands.reconstruct import config_from_args
    from cadfd_ros.errors import CadfdError
    from cadfd_ros.pipeline import resolve_device

    named = {"default": cm.default_cameras_path, "heldout": cm.heldout_cameras_path}
    path = named[args.cameras]() if args.cameras in named else Path(args.cameras)
    cameras, split = cm.load_cameras(path)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = set(wanted) - {c.name for c in cameras}
        if unknown:
            raise CadfdError(f"--only: no camera named {', '.join(sorted(unknown))} in {path}")
        cameras = [c for c in cameras if c.name in wanted]
    splits = {"tuning": split.tuning, "heldout": split.heldout}
    if args.photos == ",".join(TEST_PHOTOS):  # the flag's default: the held-out split
        args.photos = "heldout"
    if args.photos in splits:
        photos = splits[args.photos]
    else:  # a subset of one split, named photo by photo
        photos = tuple(p.strip() for p in args.photos.split(",") if p.strip())
        owner = {name for name, members in splits.items() if set(photos) <= set(members)}
        if not owner:
            raise CadfdError(f"--photos with --cameras: tuning, heldout, or photos of one split of {path}; "
                             f"got {args.photos!r}")
        args.photos = f"{owner.pop()} subset"
    if args.measured_depth:
        from cadfd_ros.bench.scenes import MEASURED_DISPARITY

        missing = [p for p in photos if p not in MEASURED_DISPARITY]
        if missing:
            raise CadfdError(f"--measured-depth: no measured depth for {', '.join(missing)} (photos with one: "
                             f"{', '.join(MEASURED_DISPARITY)}; choose them with --photos)")
    device = resolve_device(args.device)
    solver = config_from_args(args, method="dps")  # the solver flags (--prior, --noise-model, ...) apply here too
    args.out_dir.mkdir(parents=True, exist_ok=True)  # an output under a file fails here, not after the run
    results = [cm.run_camera(camera, photos, steps=args.steps, seed=args.seed, repeats=args.repeats, device=device,
                             config=solver, motion_px=args.motion_blur, measured_depth=args.measured_depth)
               for camera in cameras]
    depths = (f"{args.repeats} noise draw(s) over its measured depth" if args.measured_depth
              else f"{args.repeats} depth map(s)")
    header = (f"Camera matrix {path.name}, {args.photos} photos ({', '.join(photos)}) x {depths}, "
              f"seed {args.seed}, DFD-DPS {args.steps} steps"
              + (f", captures blurred by a {args.motion_blur} px sideways motion (the ceilings' model has none)"
                 if args.motion_blur else "")
              + "; textured pixels, border band of half a PSF excluded.\n\n")
    text = (header + cm.camera_table(results) + "\n\n" + cm.lead_table(results) + "\n\n"
            + "DFD-DPS depth kept at each min_confidence (textured pixels, pooled over scenes):\n\n"
            + cm.trade_table(results) + "\n")
    side = cm.side_table(results)
    if side:
        text += "\nCameras straddling focus: δ, and δ with a depth's mirror across focus counted right:\n\n" + side + "\n"
    summary = cm.results_json(results)
    text += ("\nWhere the wrong depths go: δ, then the shares of textured pixels read with too small a blur, "
             "too large a blur and on the other side of focus (they sum to 1):\n\n"
             + cm.wrong_depth_table([summary]) + "\n")
    text += ("\nEvery scene (δ on its textured pixels; textured share of the frame):\n\n"
             + cm.scene_table(results) + "\n")
    (args.out_dir / "camera_matrix.md").write_text(text)
    (args.out_dir / "camera_matrix.json").write_text(json.dumps(summary, indent=2) + "\n")
    figure = cm.save_worst_camera_figure(args.out_dir / "worst_camera.png", results)
    print(text)
    print(f"wrote {args.out_dir}/camera_matrix.md, camera_matrix.json" + (f", {figure.name}" if figure else ""))
    return 0


def _run_speed(args: argparse.Namespace) -> int:
    from cadfd_ros.bench import speed
    from cadfd_ros.commands.reconstruct import config_from_args
    from cadfd_ros.errors import CadfdError
    from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank
    from cadfd_ros.pipeline import resolve_device

    sizes = speed.parse_sizes(args.speed_sizes)
    try:
        steps = tuple(sorted({int(v) for v in args.speed_steps.split(",") if v.strip()}))
    except ValueError:
        raise CadfdError(f"--speed-steps must be a comma list of integers, got {args.speed_steps!r}") from None
    if not steps or not 1 <= steps[0] <= steps[-1] <= 1000:
        raise CadfdError(f"--speed-steps: step counts must be in [1, 1000], got {args.speed_steps!r}")
    names = {"mono": 1, "rgb": 3}
    wanted = [v.strip().lower() for v in args.speed_channels.split(",") if v.strip()]
    if not wanted or set(wanted) - set(names):
        raise CadfdError(f"--speed-channels: mono, rgb or mono,rgb; got {args.speed_channels!r}")
    if args.speed_repeats < 1:
        raise CadfdError(f"--speed-repeats must be at least 1, got {args.speed_repeats}")
    bank = load_psf_bank(args.psf_bank or default_psf_bank_path())
    device = resolve_device(args.device)
    args.out_dir.mkdir(parents=True, exist_ok=True)  # an output under a file fails here, not after the run
    rows = speed.run_speed(bank, sizes, steps, tuple(names[w] for w in wanted), device, args.speed_repeats,
                           config=config_from_args(args, method="dps"))
    header = (f"Speed, DFD-DPS, bank {bank.source}, {speed.machine_description(device)}, {speed.timestamp()}; "
              f"median of {args.speed_repeats} frames after a warm-up. overhead = total / network_s.")
    print(speed.write_speed(args.out_dir, rows, header))
    print(f"wrote {args.out_dir}/speed.md, speed.json")
    return 0


def _run_sequence(args: argparse.Namespace) -> int:
    from cadfd_ros.bench import camera_matrix as cm
    from cadfd_ros.bench import sequence as sq
    from cadfd_ros.bench.scenes import TEST_PHOTOS
    from cadfd_ros.bench.speed import machine_description, timestamp
    from cadfd_ros.commands.reconstruct import config_from_args
    from cadfd_ros.errors import CadfdError
    from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank

    try:
        height, width = (int(v) for v in args.sequence_size.lower().split("x"))
    except ValueError:
        raise CadfdError(f"--sequence-size must look like 120x160, got {args.sequence_size!r}") from None
    _, split = cm.load_cameras(cm.default_cameras_path())
    splits = {"tuning": split.tuning, "heldout": split.heldout}
    name = "heldout" if args.photos == ",".join(TEST_PHOTOS) else args.photos  # the flag's default: held out
    photos = splits.get(name) or tuple(p.strip() for p in name.split(",") if p.strip())
    config = sq.SequenceConfig(frames=args.sequence_frames, cut_every=args.sequence_cut_every, height=height,
                               width=width, noise_sigma=args.noise, max_shift_px=args.sequence_shift,
                               max_rotation_deg=args.sequence_rotation, cold_every=args.sequence_cold_every,
                               seed=args.seed)
    bank = load_psf_bank(args.psf_bank or default_psf_bank_path())
    solver = config_from_args(args, method="dps")
    began = time.perf_counter()
    if args.sequence_warm_refresh is not None and args.sequence_warm_refresh < 0:
        raise CadfdError(f"--sequence-warm-refresh must be 0 (never) or positive, got {args.sequence_warm_refresh}")
    args.out_dir.mkdir(parents=True, exist_ok=True)  # an output under a file fails here, not after the run
    rows = sq.run_sequence(bank, photos, config, solver, partial_csv=args.out_dir / "sequence.partial.csv",
                           warm_refresh_every=args.sequence_warm_refresh)
    summary = sq.summarise_sequence(rows, config)
    summary["photos"] = list(photos)
    summary["wall_seconds"] = time.perf_counter() - began
    header = (f"Sequence bench: {config.frames} frames at {width}x{height}, a cut every {config.cut_every} frames "
              f"({', '.join(photos)}; {name if name in splits else 'listed'} photos), up to {config.max_shift_px:g} px and "
              f"{config.max_rotation_deg:g} deg per frame, noise sigma {config.noise_sigma}, seed {config.seed}; "
              f"DFD-DPS {solver.sampler_config().sampler_name} {solver.steps} steps cold"
              f"{'' if args.sequence_warm_refresh is None else f', warm arm cold every {args.sequence_warm_refresh} frames'}; bank {bank.source}; {machine_description(solver.device if solver.device != 'auto' else 'cpu')}, "
              f"{timestamp()}; {summary['wall_seconds']:.0f} s in all.")
    written = sq.write_sequence(args.out_dir, rows, summary, header, config)
    (args.out_dir / "sequence.partial.csv").unlink(missing_ok=True)  # complete: sequence.csv has every row
    print(sq.sequence_markdown(summary, header))
    print(f"wrote {args.out_dir}/{', '.join(written)}")
    return 0
