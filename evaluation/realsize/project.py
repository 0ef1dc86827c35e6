"""Counted FLOPs -> projected GPU-hours (a range over utilisations), beside published reference figures.

    python evaluation/realsize/project.py --sd /tmp/realsize/flops_sd.json --gan /tmp/realsize/flops_gan.json

Inputs are count_flops.py's JSON (counted here, on the meta device). Peak figures are the vendors'
dense bf16 tensor-core numbers; utilisation = achieved / peak. Nothing here is measured on a GPU.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

PEAK_TFLOPS = {"A100 (312 TFLOPS bf16 dense)": 312.0, "H100 SXM (989 TFLOPS bf16 dense)": 989.0}
UTILISATIONS = (0.10, 0.20, 0.35, 0.50)
# Published reference figures (not measured here).
SD15_A100_S_PER_IMAGE_50_STEPS = 1.6      # SD 1.5, 512 px, 50 steps, plain diffusers, A100
EG3D_S_PER_KIMG_8xV100 = 24.0             # EG3D FFHQ-512 training speed on 8 V100s


def project(sd: dict, gan: dict, num_images: int = 500_000, gan_kimg: float = 25_000) -> dict:
    gen_flops = num_images * sd["per_image_20_steps"]
    steps = {s["neural_resolution"]: s for s in gan["steps"]}
    # Neural resolution fades 64 -> 128 over the first 1000 kimg: the mean of the two ends there, 128 after.
    lo, hi = steps[64]["flops_per_image_amortised"], steps[128]["flops_per_image_amortised"]
    fade = min(1000.0, gan_kimg)
    gan_flops = (fade * (lo + hi) / 2 + (gan_kimg - fade) * hi) * 1e3
    rows = []
    for job, flops in (("generation: 500k images, 20 steps, CFG x2, UNet + 2 ControlNets (+text, VAE)", gen_flops),
                       (f"paper GAN: {gan_kimg:.0f} kimg (G+D+R1/16+density/4)", gan_flops)):
        for gpu, peak in PEAK_TFLOPS.items():
            hours = {f"{u:.0%}": round(flops / (peak * 1e12 * u) / 3600, 1) for u in UTILISATIONS}
            rows.append({"job": job, "gpu": gpu, "total_flops": flops, "gpu_hours": hours})
    ref = {
        "sd15_a100_implied_utilisation": round(
            sd["per_image_50_steps_no_controlnet"] / SD15_A100_S_PER_IMAGE_50_STEPS / 312e12, 3),
        "generation_a100_hours_at_that_utilisation": None,
        "eg3d_8xV100_gpu_hours_for_schedule": round(gan_kimg * EG3D_S_PER_KIMG_8xV100 * 8 / 3600, 0),
    }
    # Our counted FLOPs per image at EG3D's published speed: achieved TFLOPS per V100 (EG3D's own G/D are close
    # to ours in size, so this is an estimate of the rate a tuned tri-plane GAN reaches, not a measurement).
    ref["eg3d_implied_tflops_per_v100"] = round(hi * 1e3 / EG3D_S_PER_KIMG_8xV100 / 8 / 1e12, 1)
    u = ref["sd15_a100_implied_utilisation"]
    ref["generation_a100_hours_at_that_utilisation"] = round(gen_flops / (312e12 * u) / 3600, 1)
    ref["generation_a100_s_per_image_at_that_utilisation"] = round(sd["per_image_20_steps"] / (312e12 * u), 2)
    return {"rows": rows, "reference": ref}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sd", required=True)
    p.add_argument("--gan", required=True)
    p.add_argument("--num-images", type=int, default=500_000)
    p.add_argument("--gan-kimg", type=float, default=25_000)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    result = project(json.loads(Path(args.sd).read_text()), json.loads(Path(args.gan).read_text()),
                     args.num_images, args.gan_kimg)
    cols = [f"{u:.0%}" for u in UTILISATIONS]
    print("| job | GPU | total FLOPs | " + " | ".join(f"GPU-h @ {c}" for c in cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    for r in result["rows"]:
        print(f"| {r['job']} | {r['gpu']} | {r['total_flops']:.3g} | " + " | ".join(str(r["gpu_hours"][c]) for c in cols) + " |")
    print(json.dumps(result["reference"], indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
