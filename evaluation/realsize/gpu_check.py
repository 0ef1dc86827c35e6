"""Five-minute GPU check of the real-size configurations (run by gpu_check.sh).

On a GPU: SD 1.5-size UNet + 2 ControlNets + VAE + CLIP text (random weights, built on
the meta device and filled on the GPU: no download, no folders), fp16, 20 UniPC steps,
512 px, through the project's own ``avatar3d.datagen.pipeline.generate`` -> seconds per
image; the paper GAN (``GANConfig.paper()``) training step (G + D + density reg + R1,
``GANTrainer``) under bf16 autocast at batch 4 -> seconds per step and per image; one
Ray Train worker on NCCL (all-reduce on its GPU); where every module's weights sit.

``--tiny`` (or ``AVATAR3D_GPU_CHECK_TINY=1``): the same code at the tiny presets on the
CPU (fp32, 2 steps, 64 px, batch 2, gloo), so the script is tested without a GPU.
Prints one table; ``--out`` writes it as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _sync(device):
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def _placement(modules: dict, device: str, dtype) -> list[str]:
    """Modules with a parameter off ``device`` or (floating) not in ``dtype``."""
    bad = []
    for name, m in modules.items():
        for p in m.parameters():
            if p.device.type != device or (p.is_floating_point() and dtype is not None and p.dtype != dtype):
                bad.append(f"{name}: {p.device}/{p.dtype}")
                break
    return bad


def _fill_random(module, device):
    """A meta-built module -> real storage on ``device`` with small random weights (fast on a GPU)."""
    import torch
    module = module.to_empty(device=device)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.02)
        for b in module.buffers():
            if b.is_floating_point():
                b.zero_()
    return module


def check_generation(tiny: bool, device: str, rows: list) -> None:
    import numpy as np
    import torch
    from diffusers import StableDiffusionControlNetPipeline, UniPCMultistepScheduler
    from diffusers.models import MultiControlNetModel

    from avatar3d.datagen.pipeline import build_tiny_components, generate
    from avatar3d.datagen.tokenizer import build_clip_tokenizer

    dtype = torch.float32 if tiny else torch.float16
    steps, res, batch = (2, 64, 2) if tiny else (20, 512, 8)
    t = time.perf_counter()
    if tiny:
        parts = build_tiny_components("hybrid")
    else:
        import sd15_configs as sd
        parts = {}
        for name in ("unet", "vae", "text_encoder"):
            parts[name] = _fill_random(sd.build(name, "meta"), device)
        parts["controlnet"] = [_fill_random(sd.build("controlnet", "meta"), device) for _ in range(2)]
        parts.update(tokenizer=build_clip_tokenizer(), safety_checker=None, feature_extractor=None,
                     image_encoder=None, requires_safety_checker=False)
        from diffusers import DDIMScheduler
        parts["scheduler"] = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    parts["controlnet"] = MultiControlNetModel(parts["controlnet"])
    pipe = StableDiffusionControlNetPipeline(**parts).to(device=device, dtype=dtype)
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    build_s = time.perf_counter() - t
    bad = _placement({"unet": pipe.unet, "controlnet": pipe.controlnet, "vae": pipe.vae,
                      "text_encoder": pipe.text_encoder}, device, dtype)
    ctl = [np.zeros((res, res, 3), np.uint8)] * batch

    def run(n_steps):
        _sync(device)
        t0 = time.perf_counter()
        generate(pipe, ["a portrait"] * batch, [""] * batch, [ctl, ctl], list(range(batch)), steps=n_steps,
                 guidance_scale=7.5, conditioning_scales=[1.0, 1.0], height=res, width=res)
        _sync(device)
        return time.perf_counter() - t0

    run(2)  # warm-up (kernels, allocator)
    wall = run(steps)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    rows.append(dict(check="generation", config=f"{'tiny' if tiny else 'SD1.5+2CN'} {str(dtype)[6:]} {res}px "
                     f"{steps} steps CFG batch {batch}", value=round(wall / batch, 3), unit="s/image",
                     build_s=round(build_s, 1), peak_gpu_gib=round(mem, 2), placement="ok" if not bad else "; ".join(bad)))
    del pipe, parts
    if device == "cuda":
        torch.cuda.empty_cache()


def check_gan(tiny: bool, device: str, rows: list) -> None:
    import torch

    from avatar3d.gan.config import GANConfig
    from avatar3d.gan.step import GANTrainer
    from count_flops import real_batch

    cfg = (GANConfig.tiny if tiny else GANConfig.paper)(d_mode="coarse_to_fine", r1_gamma=1.0)
    batch = 2 if tiny else 4
    torch.manual_seed(0)
    t = time.perf_counter()
    tr = GANTrainer(cfg, device=device)
    build_s = time.perf_counter() - t
    img, c = real_batch(cfg, batch)
    img, c = img.to(device), c.to(device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=not tiny)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def steps(n):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            with autocast:
                tr.step(img, c)
        _sync(device)
        return (time.perf_counter() - t0) / n

    if not tiny:
        steps(1)  # warm-up; batch_idx 0 also runs both regularisers
    n = 1 if tiny else 8  # 8 steps: 2 with density reg, 1 with R1 (batch_idx 1..8) -> near the amortised mix
    per_step = steps(n)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    bad = _placement({"G": tr.G, "D": tr.D, "G_ema": tr.G_ema}, device, torch.float32)
    rows.append(dict(check="gan_step", config=f"{'tiny' if tiny else 'paper'} {'fp32' if tiny else 'bf16 autocast'} "
                     f"batch {batch} neural {cfg.neural_rendering_resolution} out {cfg.output_resolution}",
                     value=round(per_step / batch, 3), unit="s/image", build_s=round(build_s, 1),
                     peak_gpu_gib=round(mem, 2), placement="ok" if not bad else "; ".join(bad)))
    del tr


def _ray_worker(config):
    import json as _json

    import ray
    import torch
    import torch.distributed as dist

    device = "cuda" if config["use_gpu"] else "cpu"
    x = torch.ones(4, device=device)
    dist.all_reduce(x)
    # A file beside the driver (one node): no dependence on which report API the Ray version has.
    with open(config["result"], "w") as f:
        _json.dump({"backend": dist.get_backend(), "device": str(x.device), "sum": float(x.sum()),
                    "gpus": ",".join(map(str, ray.get_gpu_ids()))}, f)


def check_ray_train(tiny: bool, rows: list) -> None:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = not tiny
    t = time.perf_counter()
    ray.init(num_cpus=2, num_gpus=1 if use_gpu else 0, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        import tempfile
        tmp = tempfile.mkdtemp(prefix="gpu_check_ray_")
        result = os.path.join(tmp, "worker.json")
        trainer = TorchTrainer(
            _ray_worker, train_loop_config={"use_gpu": use_gpu, "result": result},
            scaling_config=ScalingConfig(num_workers=1, use_gpu=use_gpu, resources_per_worker={"CPU": 1}),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(storage_path=tmp))
        trainer.fit()
        m = json.loads(Path(result).read_text())
        ok = m["sum"] == 4.0 and m["device"].startswith("cuda" if use_gpu else "cpu")
        rows.append(dict(check="ray_train_worker", config=f"1 worker, {m['backend']}, {m['device']}, GPU ids {m['gpus'] or '-'}",
                         value=round(time.perf_counter() - t, 1), unit="s (init+fit)", build_s="",
                         peak_gpu_gib="", placement="ok" if ok else f"FAILED {m}"))
    finally:
        ray.shutdown()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", default=os.environ.get("AVATAR3D_GPU_CHECK_TINY", "") == "1",
                   help="tiny presets on the CPU (tests); also AVATAR3D_GPU_CHECK_TINY=1")
    p.add_argument("--skip", nargs="*", default=[], choices=["generation", "gan", "ray"])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    import torch
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible; pass --tiny (or AVATAR3D_GPU_CHECK_TINY=1) for the CPU check")
        return 2
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    print(f"gpu_check: torch {torch.__version__}, device {gpu}, mode {'tiny/CPU' if args.tiny else 'real size'}",
          flush=True)
    rows: list[dict] = []
    failed = []
    for name, fn in (("generation", lambda: check_generation(args.tiny, device, rows)),
                     ("gan", lambda: check_gan(args.tiny, device, rows)),
                     ("ray", lambda: check_ray_train(args.tiny, rows))):
        if name in args.skip:
            continue
        t = time.perf_counter()
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - one failed check must not hide the others' numbers
            failed.append(name)
            rows.append(dict(check=name, config="", value="", unit="", build_s="", peak_gpu_gib="",
                             placement=f"FAILED {type(err).__name__}: {str(err)[:200]}"))
        print(f"gpu_check: {name} done in {time.perf_counter() - t:.1f} s", flush=True)
    cols = ["check", "config", "value", "unit", "build_s", "peak_gpu_gib", "placement"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": gpu, "tiny": args.tiny, "rows": rows}, indent=2) + "\n")
    bad = failed or [r["check"] for r in rows if str(r["placement"]) != "ok"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
