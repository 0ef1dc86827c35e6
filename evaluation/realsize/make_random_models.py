"""Write SD 1.5 and the two ControlNet v1.1 nets as local diffusers folders with random weights.

The folders have the hub repos' layout, so the project's loaders take them by path exactly as they take
the hub ids (``pipeline.base_model=<out>/sd15 pipeline.controlnet_openpose=<out>/controlnet-openpose
pipeline.controlnet_depth=<out>/controlnet-depth``, ``lora-train base_model=<out>/sd15``):

    <out>/sd15/model_index.json           stable-diffusion-v1-5's own (StableDiffusionPipeline, PNDM, ...)
    <out>/sd15/unet/                       config.json + diffusion_pytorch_model.safetensors
    <out>/sd15/vae/                        config.json + diffusion_pytorch_model.safetensors
    <out>/sd15/text_encoder/               config.json + model.safetensors (CLIP ViT-L/14 text)
    <out>/sd15/tokenizer/                  CLIP's BPE tokenizer, built offline (avatar3d.datagen.tokenizer)
    <out>/sd15/scheduler/                  scheduler_config.json (PNDMScheduler)
    <out>/sd15/feature_extractor/          preprocessor_config.json (CLIPImageProcessor)
    <out>/sd15/safety_checker/             only with --safety-checker (the project loads SD with safety_checker=None)
    <out>/controlnet-openpose/             config.json + diffusion_pytorch_model.safetensors
    <out>/controlnet-depth/                (same architecture, other random weights)

Architectures: :mod:`sd15_configs` (the published config.json files). ``--dtype float16`` (default)
halves the disk (~1.7 GB UNet, ~0.7 GB per ControlNet); ``from_pretrained(dtype=...)`` casts on load.
``--tiny`` writes the project's tiny preset components (``build_tiny_components``) in the same layout:
seconds, for tests. Components are built one at a time and freed (peak RSS ~4 GB at real size).

    python evaluation/realsize/make_random_models.py --out /tmp/realsize/models
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sd15_configs as sd  # noqa: E402

SEED = 1234


def _save(module, folder: Path, dtype) -> None:
    import torch
    if dtype != torch.float32:
        module = module.to(dtype)
    module.save_pretrained(str(folder))


def _component(name: str, tiny: bool, parts: dict | None, index: int = 0):
    import torch
    torch.manual_seed(SEED + index)
    if tiny:
        if name == "controlnet":
            return parts["controlnet"][index - 1]
        return parts[name]
    return sd.build(name)


def write_models(out: str | Path, dtype: str = "float16", tiny: bool = False, safety_checker: bool = False,
                 log=print) -> dict:
    """Write the folders; returns {component: {"path", "params", "seconds"}} and the paths to pass."""
    import torch
    from transformers import CLIPImageProcessor

    from avatar3d.datagen.tokenizer import build_clip_tokenizer, load_vocab_and_merges

    out = Path(out)
    root = out / "sd15"
    root.mkdir(parents=True, exist_ok=True)
    torch_dtype = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    parts = None
    if tiny:
        from avatar3d.datagen.pipeline import build_tiny_components
        parts = build_tiny_components("hybrid")
    report = {}
    jobs = [("unet", root / "unet", 0), ("vae", root / "vae", 10), ("text_encoder", root / "text_encoder", 11),
            ("controlnet", out / "controlnet-openpose", 1), ("controlnet", out / "controlnet-depth", 2)]
    for name, folder, index in jobs:
        t = time.perf_counter()
        module = _component(name, tiny, parts, index)
        n = sd.num_params(module)
        _save(module, folder, torch_dtype)
        del module
        gc.collect()
        report[folder.name] = {"path": str(folder), "params": n, "seconds": round(time.perf_counter() - t, 1)}
        log(f"{folder}: {n / 1e6:.1f}M parameters, {report[folder.name]['seconds']} s")
    tokenizer = build_clip_tokenizer()
    tokenizer.save_pretrained(str(root / "tokenizer"))
    # The hub folder's slow-tokenizer files too (vocab.json, merges.txt), from the same BPE file.
    vocab, merges = load_vocab_and_merges()
    (root / "tokenizer" / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (root / "tokenizer" / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                                   encoding="utf-8")
    scheduler = dict(sd.SCHEDULER, _diffusers_version="0.6.0")
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
    fe = {k: v for k, v in sd.FEATURE_EXTRACTOR.items() if k != "image_processor_type"}
    CLIPImageProcessor(**fe).save_pretrained(str(root / "feature_extractor"))
    index = dict(sd.MODEL_INDEX)
    if safety_checker:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPConfig
        torch.manual_seed(SEED + 20)
        checker = StableDiffusionSafetyChecker(CLIPConfig(projection_dim=768, text_config={"hidden_size": 768},
                                                          vision_config={"hidden_size": 1024, "intermediate_size": 4096,
                                                                         "num_attention_heads": 16, "num_hidden_layers": 24,
                                                                         "patch_size": 14}))
        _save(checker, root / "safety_checker", torch_dtype)
        del checker
    (root / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    report["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    report["overrides"] = [f"pipeline.base_model={root}", f"pipeline.controlnet_openpose={out / 'controlnet-openpose'}",
                           f"pipeline.controlnet_depth={out / 'controlnet-depth'}"]
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder to write (put it under /tmp, never in the repo)")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32", "bfloat16"])
    p.add_argument("--tiny", action="store_true", help="the tiny preset's components, same layout (tests)")
    p.add_argument("--safety-checker", action="store_true", help="also write a random safety_checker/ (~0.6 GB fp16)")
    args = p.parse_args(argv)
    t = time.perf_counter()
    report = write_models(args.out, args.dtype, args.tiny, args.safety_checker)
    report["wall_s"] = round(time.perf_counter() - t, 1)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
