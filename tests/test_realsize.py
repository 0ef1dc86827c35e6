"""Real-size configurations (issue #19).

Fast: every real-size config is built on the meta device (no memory, no weights), so a size
hard-coded for the tiny presets fails here: SD 1.5's UNet, VAE, CLIP text encoder and the
ControlNet v1.1 nets from their published architectures (evaluation/realsize/sd15_configs.py)
with the published parameter counts; the paper GAN (jobs/configs/train_gan_paper.yaml) through
a forward at neural resolution 64 and 128; the paper prior; the SD 1.5 LoRA config's adapter.
Local folders in the hub layout (make_random_models.py) load through the project's own loader
exactly as hub ids do; gpu_check.sh runs in its tiny/CPU mode.

Slow: the real-size generation path (random SD 1.5-size folders, 2 images, 2 steps) through
``avatar3d generate``, and gpu_check.sh's Ray Train worker.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REALSIZE = ROOT / "evaluation" / "realsize"
sys.path.insert(0, str(REALSIZE))

import sd15_configs as sd  # noqa: E402


@pytest.mark.parametrize("name", sorted(sd.PUBLISHED_PARAMS))
def test_sd15_component_has_the_published_size(name):
    m = sd.build(name, "meta")
    assert next(m.parameters()).is_meta
    # ControlNet: diffusers' current class counts 144 more than the figure quoted (361,278,976): 1e-5 slack.
    assert sd.num_params(m) == pytest.approx(sd.PUBLISHED_PARAMS[name], rel=1e-5)


def test_sd15_unet_and_controlnet_step_run_on_meta_at_512px():
    """Shapes line up at 512 px (64^2 latents): two ControlNets' residuals feed the UNet."""
    unet, nets = sd.build("unet", "meta"), [sd.build("controlnet", "meta") for _ in range(2)]
    with torch.device("meta"), torch.no_grad():
        x, t, ehs = torch.randn(2, 4, 64, 64), torch.tensor([10, 10]), torch.randn(2, 77, 768)
        cond = torch.randn(2, 3, 512, 512)
        res = [n(x, t, encoder_hidden_states=ehs, controlnet_cond=cond, return_dict=False) for n in nets]
        downs = [a + b for a, b in zip(res[0][0], res[1][0])]
        out = unet(x, t, encoder_hidden_states=ehs, down_block_additional_residuals=downs,
                   mid_block_additional_residual=res[0][1] + res[1][1]).sample
    assert out.shape == (2, 4, 64, 64)


def test_sd15_flops_counted_on_meta():
    import count_flops
    f = count_flops.count_sd()
    # One CFG pair (2 latents) at 64^2: UNet ~1.6 TFLOPs, 2 ControlNets ~1.13 TFLOPs (FlopCounterMode, 2 x MACs).
    assert f["unet_per_step_cfg"] == pytest.approx(1.6065e12, rel=1e-3)
    assert f["controlnets_2_per_step_cfg"] == pytest.approx(1.1332e12, rel=1e-3)
    assert f["vae_decode_per_image"] == pytest.approx(2.5145e12, rel=1e-3)


def _paper_gan():
    from avatar3d.config import load_config
    from avatar3d.training.config import TrainGANConfig
    cfg = load_config(TrainGANConfig, str(ROOT / "jobs" / "configs" / "train_gan_paper.yaml"))
    return cfg.model.build()


@pytest.mark.parametrize("neural_res", [64, 128])
def test_paper_gan_forward_on_meta(neural_res):
    from avatar3d.gan.generator import TriPlaneGenerator
    from avatar3d.gan.step import build_discriminator

    g = _paper_gan()
    assert (g.plane_resolution, g.output_resolution, g.neural_rendering_resolution,
            g.neural_rendering_resolution_final) == (256, 512, 64, 128)
    with torch.device("meta"):
        G, D = TriPlaneGenerator(g), build_discriminator(g)
        z, c = torch.randn(2, g.z_dim), torch.randn(2, g.c_dim)
        ws = G.mapping(z, c)
        planes = G.synthesize_planes(ws)
        out = G.synthesis(ws, c, neural_rendering_resolution=neural_res)
        logits = D(out.image, out.image_raw, torch.zeros(2, g.d_label_dim))
    assert planes.shape == (2, 3, 32, 256, 256)
    assert out.image.shape == (2, 3, 512, 512) and out.image_raw.shape == (2, 3, neural_res, neural_res)
    assert logits.shape[0] == 2
    # Measured sizes of the paper preset (EG3D FFHQ-512: ~31M generator).
    assert sum(p.numel() for p in G.parameters()) == 30_662_132
    assert sum(p.numel() for p in D.parameters()) == 31_371_008


def test_paper_gan_training_step_flops_on_meta():
    """G + D + density reg + R1 through GANTrainer's own losses, batch 2, on the meta device."""
    import count_flops
    f = count_flops.count_gan_step(batch=2, res=64)
    assert set(f["phases"]) == {"Gmain", "Greg", "Dmain", "Dreg"}
    assert all(p["flops"] > 0 for p in f["phases"].values())
    assert f["flops_per_image_amortised"] == pytest.approx(2.279e12, rel=1e-2)


def test_paper_prior_size():
    from avatar3d.config import read_yaml
    from avatar3d.prior.model import PriorSize, build_prior

    size = read_yaml(ROOT / "jobs" / "configs" / "prior_train_paper.yaml")["model"]["size"]  # (its pairs= is set at run time)
    prior = build_prior(512, 768, PriorSize.preset(size))  # w 512 (paper GAN), CLIP ViT-L/14 768
    n = sum(p.numel() for p in prior.parameters())
    assert n == pytest.approx(73.4e6, rel=1e-2)  # model.py says "~70M"


def test_paper_image_encoder_size():
    """CLIP ViT-L/14's vision tower (303,179,776) + its 768-d projection (786,432), the paper prior's encoder."""
    enc = sd.build("image_encoder", "meta")
    assert sd.num_params(enc) == 303_966_208 and enc.config.projection_dim == 768


def test_image_to_avatar_folder_round_trip_at_tiny_size(tmp_path):
    """count_flops i2a: the pipeline folder is written and loaded by the real loader, then an input -> views;
    at tiny size here, at the paper's sizes in the README's run."""
    import count_flops

    r = count_flops.image_to_avatar(str(tmp_path / "prior"), tiny=True, steps=2)
    assert r["views"] == [1, 3, 64, 64, 3] and r["sampling"]["num_inference_steps"] == 2
    assert r["flops_call"] > 0 and np.isfinite(r["w_norm"])
    assert {p.name for p in (tmp_path / "prior").iterdir()} >= {"avatar3d_prior.json", "generator.safetensors",
                                                            "image_encoder", "prior", "scheduler"}


def test_lora_sd15_config_adapter_on_meta_unet():
    from avatar3d.config import read_yaml
    from avatar3d.lora.train import add_lora

    cfg = read_yaml(ROOT / "jobs" / "configs" / "lora_sd15.yaml")  # (its images= is set at run time)
    assert cfg["preset"] == "sd15"
    unet = sd.build("unet", "meta")
    params = add_lora(unet, cfg["rank"], cfg["alpha"], cfg["target_modules"])
    # rank 16 on to_q/k/v/out.0 of SD 1.5's 32 attention blocks: 3,188,736 (= 4 x diffusers' rank-4 797,184).
    assert sum(p.numel() for p in params) == 3_188_736
    assert all(p.dtype == torch.float32 for p in params)


def test_hub_layout_folders_load_like_hub_ids(tmp_path):
    """make_random_models --tiny -> sd15/ + controlnet-*/ folders; the project's loader (preset sd15, local
    paths) gives the same pipeline and images as the tiny preset built in memory."""
    import make_random_models

    from avatar3d.datagen.config import PipelineConfig
    from avatar3d.datagen.pipeline import build_pipeline, check_models_available, generate_from_config

    report = make_random_models.write_models(tmp_path, "float32", tiny=True, log=lambda *a: None)
    root = tmp_path / "sd15"
    index = json.loads((root / "model_index.json").read_text())
    assert index == sd.MODEL_INDEX
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "feature_extractor"):
        assert (root / sub).is_dir(), sub
    assert {"vocab.json", "merges.txt"} <= {p.name for p in (root / "tokenizer").iterdir()}
    overrides = dict(o.split("=", 1) for o in report["overrides"])
    cfg = PipelineConfig(preset="sd15", base_model=overrides["pipeline.base_model"],
                         controlnet_openpose=overrides["pipeline.controlnet_openpose"],
                         controlnet_depth=overrides["pipeline.controlnet_depth"], device="cpu", steps=2)
    check_models_available(cfg)
    pipe = build_pipeline(cfg)
    tiny_cfg = PipelineConfig(preset="tiny", device="cpu", steps=2)
    tiny = build_pipeline(tiny_cfg)
    assert type(pipe.scheduler) is type(tiny.scheduler)
    # Every weight loaded from the folders is the tiny preset's.
    pairs = [(pipe.unet, tiny.unet), (pipe.vae, tiny.vae), (pipe.text_encoder, tiny.text_encoder),
             *zip(pipe.controlnet.nets, tiny.controlnet.nets)]
    for loaded, built in pairs:
        a, b = loaded.state_dict(), built.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ctl = [np.full((64, 64, 3), 128, np.uint8)] * 2
    args = (["a portrait", "a cat"], ["", ""], [ctl, ctl], [1, 2], 64, 64)
    got, want = generate_from_config(pipe, cfg, *args), generate_from_config(tiny, tiny_cfg, *args)
    # Same weights, same code: at most 1/255 apart (loaded tensors sit in other memory than built ones, and the
    # CPU kernels may round differently at the last bit; a wrong layout or config gives other images altogether).
    diffs = [int(np.abs(a.astype(int) - b).max()) for a, b in zip(got, want)]
    assert max(diffs) <= 1, diffs


def test_lora_base_model_from_a_float16_folder_loads_and_samples_in_float32(tmp_path):
    """SD folders are mostly saved in fp16. transformers (5.x) then loads the text encoder in fp16 unless told,
    diffusers loads the UNet in fp32: the real-size LoRA run trained fine and then failed at its first preview
    ("mat1 and mat2 must have the same dtype"). The tiny folders, saved in fp16, catch it in seconds."""
    import make_random_models

    from avatar3d.lora.base import load_base_pipeline, sample_images

    make_random_models.write_models(tmp_path, "float16", tiny=True, log=lambda *a: None)
    pipe = load_base_pipeline("sd15", str(tmp_path / "sd15"))
    assert {n: next(m.parameters()).dtype for n, m in (("unet", pipe.unet), ("vae", pipe.vae),
                                                       ("text_encoder", pipe.text_encoder))} == \
        dict.fromkeys(("unet", "vae", "text_encoder"), torch.float32)
    images = sample_images(pipe, ["a portrait"], [0], steps=1, size=32)
    assert images[0].shape == (32, 32, 3) and images[0].dtype == np.uint8


def _run_gpu_check(tmp_path, *extra, timeout=600):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, AVATAR3D_GPU_CHECK_TINY="1", GPU_CHECK_TIMEOUT_S=str(timeout), PYTHON=sys.executable)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(["bash", str(REALSIZE / "gpu_check.sh"), "--out", str(out), *extra], env=env,
                          capture_output=True, text=True, timeout=timeout + 30, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| check |" in proc.stdout
    return json.loads(out.read_text())["rows"]


def test_gpu_check_runs_in_tiny_cpu_mode(tmp_path):
    rows = _run_gpu_check(tmp_path, "--skip", "ray")
    assert [r["check"] for r in rows] == ["generation", "gan_step"]
    assert all(r["placement"] == "ok" and r["value"] > 0 for r in rows)


def test_gpu_check_without_cuda_says_so(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    env = dict(os.environ, GPU_CHECK_TIMEOUT_S="120", PYTHON=sys.executable)
    env.pop("AVATAR3D_GPU_CHECK_TINY", None)
    proc = subprocess.run(["bash", str(REALSIZE / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=150, cwd=tmp_path)
    assert proc.returncode == 2 and "--tiny" in proc.stdout


@pytest.mark.slow
def test_gpu_check_ray_train_worker_tiny(tmp_path):
    rows = _run_gpu_check(tmp_path, "--skip", "generation", "gan")
    assert rows[0]["check"] == "ray_train_worker" and rows[0]["placement"] == "ok"


@pytest.mark.slow
def test_realsize_generation_from_random_folders(tmp_path):
    """SD 1.5 size + 2 ControlNets from random-weight folders, 2 images, 2 steps, 512 px, through
    ``avatar3d generate`` (Ray Data, one CPU actor). ~7 GB RSS in fp32; minutes on 2 cores."""
    import make_random_models

    report = make_random_models.write_models(tmp_path / "models", "float16", log=lambda *a: None)
    out = tmp_path / "ds"
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "avatar3d", "generate", "--config", str(ROOT / "jobs/configs/generate_sd15.yaml"),
           *report["overrides"], f"output_dir={out}", "num_samples=2", "batch_size=2", "pipeline.steps=2",
           "pipeline.device=cpu", "pipeline.dtype=float32", "gpus_per_actor=0", "cpus_per_actor=1",
           "max_actors=1", "min_actors=1", "tracking.enabled=false", "rows_per_file=2", "guidance_batch_size=2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import pyarrow.parquet as pq
    rows = sum(pq.read_table(p).num_rows for p in (out / "shards").rglob("*.parquet"))  # (specs.parquet is the plan)
    assert rows == 2
