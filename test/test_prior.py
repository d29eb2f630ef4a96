"""Tests for the diffusion prior (issue 3): loading, domain mapping, mono/RGB, padding, training
determinism and resume, evaluation output. Tiny models keep this well under a minute on CPU."""
from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from cadfd_ros.errors import PriorError  # noqa: E402
from cadfd_ros.prior import DiffusionPrior, default_prior_path, load_prior  # noqa: E402
from cadfd_ros.prior import data as pdata  # noqa: E402
from cadfd_ros.prior.train import Trainer, TrainConfig  # noqa: E402

TINY_UNET = dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                 add_attention=False, norm_num_groups=8)


def _tiny_prior_dir(tmp: Path, *, with_scheduler: bool = True, **unet_kw) -> Path:
    torch.manual_seed(0)
    cfg = dict(TINY_UNET)
    cfg.update(unet_kw)
    unet = diffusers.UNet2DModel(**cfg)
    folder = tmp / "ckpt"
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    if with_scheduler:
        diffusers.DDPMScheduler(num_train_timesteps=50).save_pretrained(folder / "scheduler")
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> DiffusionPrior:
    return load_prior(_tiny_prior_dir(tmp_path_factory.mktemp("tiny")))


# --------------------------------------------------------------------------- loading


def test_bundled_prior_loads_offline_and_denoises(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*_a, **_k):
        raise AssertionError("the prior tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    folder = default_prior_path()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 20 * 2**20, f"bundled prior is {size / 2**20:.1f} MB"
    prior = load_prior("default")
    assert prior.unet.config.in_channels == 3 and prior.num_train_timesteps == 1000
    n = sum(p.numel() for p in prior.unet.parameters())
    assert 1e6 <= n <= 3e6
    # trained weights, not an initialisation: one Tweedie step must clearly denoise a held-out crop
    import skimage.data

    clean = pdata.center_crop_resize(pdata.srgb_to_linear(skimage.data.astronaut() / 255.0), 64)
    x = torch.from_numpy(clean).permute(2, 0, 1)[None]
    g = torch.Generator().manual_seed(0)
    noisy = x + 0.1 * torch.randn(x.shape, generator=g)
    from cadfd_ros.prior.evaluate import prior_denoise, psnr

    den, t = prior_denoise(prior, noisy, 0.1)
    p_noisy = psnr(noisy.clamp(0, 1).numpy(), x.numpy())
    p_den = psnr(den.clamp(0, 1).numpy(), x.numpy())
    assert p_den > p_noisy + 3.0, (p_noisy, p_den)


def test_user_checkpoint_round_trip(tmp_path):
    folder = _tiny_prior_dir(tmp_path)
    prior = load_prior(str(folder))
    assert prior.num_train_timesteps == 50
    ref = diffusers.UNet2DModel.from_pretrained(folder / "unet")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(prior.predict_noise(x, 7).numpy(), ref(x, torch.tensor([7, 7])).sample.numpy(), atol=1e-5)
    # a bare UNet folder gets the bundled default schedule (T = 1000)
    bare = load_prior(folder / "unet")
    assert bare.num_train_timesteps == 1000


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(PriorError, match="does not exist"):
        load_prior(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PriorError, match="config.json"):
        load_prior(tmp_path / "empty")
    folder = _tiny_prior_dir(tmp_path)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").rename(folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(PriorError, match="safetensors"):
        load_prior(folder)


def test_channel_mismatch_errors(tmp_path, tiny):
    four = _tiny_prior_dir(tmp_path / "a", in_channels=4, out_channels=4)
    with pytest.raises(PriorError, match="in_channels=4"):
        load_prior(four)
    with pytest.raises(PriorError, match="2 channels"):
        tiny.predict_noise(torch.zeros(1, 2, 16, 16), 3)
    mono = load_prior(_tiny_prior_dir(tmp_path / "b", in_channels=1, out_channels=1))
    assert mono.predict_noise(torch.zeros(1, 1, 16, 16), 3).shape == (1, 1, 16, 16)
    with pytest.raises(PriorError, match="1-channel"):
        mono.predict_noise(torch.zeros(1, 3, 16, 16), 3)
    with pytest.raises(PriorError, match="outside"):
        tiny.predict_noise(torch.zeros(1, 3, 16, 16), 50)


# --------------------------------------------------------------------------- domain, mono, padding


def test_affine_mapping_round_trip(tiny):
    x = torch.rand(2, 3, 5, 7)
    m = tiny.to_model_space(x)
    assert torch.allclose(tiny.from_model_space(m), x, atol=1e-7)
    assert tiny.to_model_space(torch.tensor([0.0, 0.5, 1.0])).tolist() == [-1.0, 0.0, 1.0]
    # affine: f(a x + (1-a) y) = a f(x) + (1-a) f(y) (what keeps the solver's operator linear)
    y = torch.rand_like(x)
    assert torch.allclose(tiny.to_model_space(0.3 * x + 0.7 * y), 0.3 * tiny.to_model_space(x) + 0.7 * tiny.to_model_space(y), atol=1e-6)


def test_mono_is_replicated_and_averaged(tiny):
    x = torch.randn(2, 1, 16, 16)
    out = tiny.predict_noise(x, 5)
    assert out.shape == (2, 1, 16, 16)
    with torch.no_grad():
        full = tiny.unet(x.expand(2, 3, 16, 16), torch.tensor([5, 5])).sample
    assert torch.allclose(out, full.mean(1, keepdim=True), atol=1e-6)
    x_rgb = torch.randn(2, 3, 16, 16)
    rgb = tiny.predict_noise(x_rgb, torch.tensor([1, 9]))
    assert rgb.shape == (2, 3, 16, 16)
    with torch.no_grad():  # each sample at its own timestep
        for i, t in enumerate((1, 9)):
            assert torch.allclose(rgb[i : i + 1], tiny.unet(x_rgb[i : i + 1], torch.tensor([t])).sample, atol=1e-6)


def test_padding_for_odd_sizes_and_gradients(tiny):
    assert tiny.downsample_factor == 2
    x = torch.randn(1, 3, 13, 21, requires_grad=True)
    out = tiny.predict_noise(x, 4)
    assert out.shape == (1, 3, 13, 21)
    padded = torch.nn.functional.pad(x.detach(), (0, 1, 0, 1), mode="reflect")
    with torch.no_grad():
        ref = tiny.unet(padded, torch.tensor([4])).sample[..., :13, :21]
    assert torch.allclose(out.detach(), ref, atol=1e-6)
    out.square().sum().backward()  # samplers differentiate through the network
    assert x.grad is not None and x.grad.abs().sum() > 0
    tiny_frame = torch.randn(1, 1, 1, 3)  # too small to reflect-pad: replicate-padded, replicated to RGB, averaged
    with torch.no_grad():
        ref = tiny.unet(torch.nn.functional.pad(tiny_frame.expand(1, 3, 1, 3), (0, 1, 0, 1), mode="replicate"),
                        torch.tensor([4])).sample[..., :1, :3].mean(1, keepdim=True)
        assert torch.allclose(tiny.predict_noise(tiny_frame, 4), ref, atol=1e-6)


def test_channels_last_gives_the_same_noise_and_gradients(tiny):
    # the sampler runs the UNet channels-last on CPU (faster there); the output must not change
    x = torch.randn(1, 3, 13, 21, requires_grad=True)
    reference = tiny.predict_noise(x, 4).detach()
    conv = tiny.unet.conv_in
    assert not conv.weight.is_contiguous(memory_format=torch.channels_last)
    tiny.set_memory_format(torch.channels_last)
    try:
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        out = tiny.predict_noise(x, 4)
        assert out.is_contiguous()  # what the FFT-based data steps downstream expect
        assert torch.allclose(out.detach(), reference, atol=1e-5)
        out.square().sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
    finally:
        tiny.set_memory_format(torch.contiguous_format)
    assert conv.weight.is_contiguous()
    with pytest.raises(PriorError, match="memory_format"):
        tiny.set_memory_format(torch.preserve_format)


def test_tweedie_and_sigma_timestep_map(tiny, monkeypatch):
    x0 = torch.rand(1, 3, 8, 8) * 2 - 1
    eps = torch.randn_like(x0)
    t = 20
    a = tiny.alphas_cumprod[t]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    monkeypatch.setattr(tiny, "predict_noise", lambda *_: eps)
    assert torch.allclose(tiny.tweedie(x_t, t), x0, atol=1e-5)
    ts = [tiny.timestep_for_sigma(s) for s in (0.05, 0.2, 0.8, 3.0)]
    assert ts == sorted(ts) and len(set(ts)) == 4
    for s in (0.2, 0.8):
        assert abs(math.log(tiny.sigma_for_timestep(tiny.timestep_for_sigma(s)) / s)) < 0.35
    assert tiny.timestep_for_sigma(0) == 0
    with pytest.raises(PriorError, match="sigma_model: -1.0 must be a finite value >= 0"):
        tiny.timestep_for_sigma(-1.0)


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    from PIL import Image

    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for k in range(3):
        yy, xx = np.mgrid[0:40, 0:48]
        img = 0.5 + 0.4 * np.sin(xx / (3 + k) + yy / 5)[..., None] * rng.uniform(0.3, 1, 3)
        Image.fromarray((img * 255).astype(np.uint8)).save(d / f"p{k}.png")
    return d


def _cfg(out: Path, photo_dir: Path, steps: int, seed: int = 0) -> TrainConfig:
    return TrainConfig(data=[str(photo_dir)], out=str(out), steps=steps, batch_size=2, crop=16, channels=(8, 16),
                       scales=(32,), seed=seed, save_every=1000, log_every=1, progress=False, warmup=2)


def _state(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    sd = load_file(out / "checkpoint" / "model.safetensors")
    sd.update({"ema." + k: v for k, v in load_file(out / "checkpoint" / "ema.safetensors").items()})
    return sd


def test_training_is_deterministic_given_seed(tmp_path, photo_dir):
    Trainer(_cfg(tmp_path / "a", photo_dir, 2)).run()
    Trainer(_cfg(tmp_path / "b", photo_dir, 2)).run()
    Trainer(_cfg(tmp_path / "c", photo_dir, 2, seed=1)).run()
    a, b, c = _state(tmp_path / "a"), _state(tmp_path / "b"), _state(tmp_path / "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # the exported folder is a loadable prior and the log has one row per step
    assert load_prior(tmp_path / "a").unet.config.block_out_channels == [8, 16]
    rows = (tmp_path / "a" / "train_log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) == 3
    info = json.loads((tmp_path / "a" / "TRAINING.json").read_text())
    assert info["steps"] == 2 and info["weights"] == "EMA" and "machine" in info


def test_resume_equals_uninterrupted_run(tmp_path, photo_dir):
    Trainer(_cfg(tmp_path / "full", photo_dir, 4)).run()
    Trainer(_cfg(tmp_path / "half", photo_dir, 2)).run()
    with pytest.raises(PriorError, match="--resume"):
        Trainer(_cfg(tmp_path / "half", photo_dir, 4))
    bad = _cfg(tmp_path / "half", photo_dir, 4)
    bad.batch_size = 3
    with pytest.raises(PriorError, match="batch_size"):
        Trainer(bad, resume=True)
    Trainer(_cfg(tmp_path / "half", photo_dir, 4), resume=True).run()
    full, half = _state(tmp_path / "full"), _state(tmp_path / "half")
    assert all(torch.equal(full[k], half[k]) for k in full)
    full_log = (tmp_path / "full" / "train_log.csv").read_text().splitlines()
    half_log = (tmp_path / "half" / "train_log.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in full_log] == [r.split(",")[:2] for r in half_log]  # same steps, same losses


def test_init_from_continues_exported_weights_and_records_the_budget(tmp_path, photo_dir):
    from safetensors.torch import load_file

    Trainer(_cfg(tmp_path / "first", photo_dir, 2)).run()
    exported = load_file(tmp_path / "first" / "unet" / "diffusion_pytorch_model.safetensors")
    cfg = _cfg(tmp_path / "more", photo_dir, 3, seed=1)
    cfg.init_from = str(tmp_path / "first")
    tr = Trainer(cfg)
    assert all(torch.equal(tr.model.state_dict()[k], v) and torch.equal(tr.ema.state_dict()[k], v) for k, v in exported.items())
    tr.run()
    info = json.loads((tmp_path / "more" / "TRAINING.json").read_text())
    assert info["steps"] == 3 and info["total_steps"] == 5 and info["init"]["steps"] == 2
    assert info["total_wall_time_s"] >= info["wall_time_s"]
    # the leg's export bundled where it started from (as cadfd_ros/prior/default is), then the leg resumed: the
    # budget still counts the first run once, not the leg twice
    (tmp_path / "first" / "TRAINING.json").write_text((tmp_path / "more" / "TRAINING.json").read_text())
    resumed = _cfg(tmp_path / "more", photo_dir, 4, seed=1)
    resumed.init_from = str(tmp_path / "first")
    Trainer(resumed, resume=True).run()
    info = json.loads((tmp_path / "more" / "TRAINING.json").read_text())
    assert info["steps"] == 4 and info["init"]["steps"] == 2 and info["total_steps"] == 6
    wrong = _cfg(tmp_path / "wrong", photo_dir, 1)
    wrong.channels, wrong.init_from = (8, 24), str(tmp_path / "first")
    with pytest.raises(PriorError, match="--init-from .*do not fit"):
        Trainer(wrong)
    missing = _cfg(tmp_path / "missing", photo_dir, 1)
    missing.init_from = str(tmp_path / "nowhere")
    with pytest.raises(PriorError, match="--init-from .*nowhere"):
        Trainer(missing)


def test_training_batches_include_grey_and_mono_noise(tmp_path, photo_dir):
    cfg = _cfg(tmp_path / "g", photo_dir, 1)
    cfg.batch_size, cfg.grey_fraction, cfg.grey_noise_fraction = 64, 1.0, 1.0
    tr = Trainer(cfg)
    x_t, t, eps = tr.batch()
    assert torch.equal(eps[:, 0], eps[:, 1]) and torch.equal(eps[:, 0], eps[:, 2])
    assert torch.allclose(x_t[:, 0], x_t[:, 2], atol=1e-6)
    cfg = _cfg(tmp_path / "h", photo_dir, 1)
    cfg.batch_size, cfg.grey_fraction = 64, 0.0
    x_t, t, eps = Trainer(cfg).batch()
    assert not torch.equal(eps[:, 0], eps[:, 1])
    assert not torch.allclose(x_t[:, 0], x_t[:, 2], atol=1e-3)


# --------------------------------------------------------------------------- data + evaluation


def test_srgb_round_trip_and_manifest_split():
    v = np.linspace(0, 1, 101, dtype=np.float32)
    np.testing.assert_allclose(pdata.linear_to_srgb(pdata.srgb_to_linear(v)), v, atol=1e-5)
    assert abs(float(pdata.srgb_to_linear(np.float32(0.5))) - 0.21404) < 1e-4
    rows = pdata.read_manifest()
    held = {r["name"] for r in rows if r["split"] == "heldout"}
    train = [r for r in rows if r["split"] == "train"]
    assert set(pdata.SKIMAGE_HELDOUT) <= held
    assert all(r["source"].split("=")[0] in ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04", "plasma-workspace-wallpapers")
               for r in train)
    assert all(r["licence"] and r["kind"] == "photo" and len(r["sha256_16"]) == 16 for r in train)
    info = default_prior_path() / "TRAINING.json"
    if info.is_file():  # the shipped weights never saw a held-out image
        files = json.loads(info.read_text())["data_files"]
        assert files and not any(Path(f).stem in held for f in files)


def test_eval_json_format(tmp_path, capsys):
    from PIL import Image

    from cadfd_ros.cli import main

    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.full((40, 40, 3), (188, 180, 196), np.uint8)).save(d / "rgb.png")  # sRGB ~188 ~ linear 0.5
    Image.fromarray(np.full((36, 36), 188, np.uint8)).save(d / "mono.png")
    prior_dir = _tiny_prior_dir(tmp_path)
    rc = main(["prior", "eval", "--images", str(d), "--prior", str(prior_dir), "--sigmas", "0.1,0.2",
               "--size", "32", "--json"])
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    res = json.loads(last)
    assert list(res) == ["0.1", "0.2"]
    for s, e in res.items():
        assert {"noisy_psnr", "prior_psnr", "tv_psnr", "bm3d_psnr"} <= set(e)
        # flat mid-grey image: noisy PSNR = -20 log10(sigma) (no clipping at 0.5 +- 5 sigma for 0.1)
        assert abs(e["noisy_psnr"] + 20 * math.log10(float(s))) < 0.5
        assert e["tv_psnr"] > e["noisy_psnr"] + 5  # TV is ideal for a flat image
        assert e["bm3d_psnr"] > e["noisy_psnr"] + 5  # so is BM3D (mono and RGB paths both ran)
    assert main(["prior", "eval", "--images", str(tmp_path / "none"), "--prior", str(prior_dir)]) == 2


def test_bm3d_reference_denoises_texture_mono_and_rgb():
    from cadfd_ros.prior.evaluate import bm3d_denoise, psnr

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48] / 48.0
    clean = 0.5 + 0.3 * np.sin(2 * np.pi * 3 * xx) * np.cos(2 * np.pi * 2 * yy)
    for img in (clean, np.stack([clean, clean[::-1], clean.T], axis=2)):
        noisy = img + 0.1 * rng.standard_normal(img.shape)
        out = bm3d_denoise(noisy, 0.1)
        assert out.shape == img.shape and out.dtype == np.float32
        assert psnr(np.clip(out, 0, 1), img) > psnr(np.clip(noisy, 0, 1), img) + 6


def test_unconditional_samples(tiny, tmp_path):
    from cadfd_ros.prior.evaluate import sample, write_samples_png

    x = sample(tiny, num=3, size=16, steps=2, seed=0)
    assert x.shape == (3, 3, 16, 16) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(x, sample(tiny, num=3, size=16, steps=2, seed=0))
    from PIL import Image

    p = write_samples_png(tiny, tmp_path / "s.png", num=4, size=16, steps=2)
    assert Image.open(p).size == (2 + 2 * 34, 2 + 2 * 34)


def test_the_committed_training_checkpoint_resumes(tmp_path):
    """training/prior holds the latest leg's full state (weights, EMA, AdamW moments, RNG), so a run can go on
    from it on another machine: it loads under the leg's frozen settings at its step, and takes a step."""
    import dataclasses
    import shutil

    from safetensors.torch import load_file

    from cadfd_ros.prior.train import TrainConfig

    committed = Path(__file__).resolve().parents[1] / "training" / "prior"
    state = json.loads((committed / "checkpoint" / "state.json").read_text())
    shutil.copytree(committed / "checkpoint", tmp_path / "leg" / "checkpoint")
    shutil.copy(committed / "train_log.csv", tmp_path / "leg" / "train_log.csv")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in state["config"].items() if k in names})
    cfg.data, cfg.out, cfg.steps, cfg.progress, cfg.save_every = [], str(tmp_path / "leg"), state["step"] + 1, False, 1
    # synthetic crops, not the training photos (not in a clean clone): the pool is not a frozen setting
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray((rng.uniform(0, 1, (96, 96, 3)) * 255).astype(np.uint8)).save(tmp_path / "p.png")
    pool = pdata.CropPool([tmp_path / "p.png"], pdata.PoolConfig((96,)))
    trainer = Trainer(cfg, resume=True, pool=pool)
    assert trainer.step == state["step"] > 0
    ema = load_file(committed / "checkpoint" / "ema.safetensors")
    assert all(torch.equal(trainer.ema.state_dict()[k], v) for k, v in ema.items())
    trainer.run()
    assert json.loads((tmp_path / "leg" / "checkpoint" / "state.json").read_text())["step"] == state["step"] + 1
