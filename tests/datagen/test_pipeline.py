"""The pipeline factory: tiny preset, determinism, batching, save/load, LoRA, offline errors."""

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from diffusers import StableDiffusionControlNetPipeline, UniPCMultistepScheduler  # noqa: E402
from diffusers.models import MultiControlNetModel  # noqa: E402

from avatar3d.datagen.pipeline import (  # noqa: E402
    ModelUnavailableError,
    PipelineConfig,
    build_pipeline,
    check_model_available,
    check_models_available,
    generate_from_config,
)

SIZE = 64


@pytest.fixture(scope="module")
def hybrid():
    cfg = PipelineConfig(preset="tiny", guidance="hybrid", steps=3, device="cpu")
    return cfg, build_pipeline(cfg)


def _inputs(n, seeds=None, kinds=2):
    rng = np.random.default_rng(123)
    controls = [[rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)] for _ in range(kinds)]
    prompts = [f"a clay avatar number {i}, side view" for i in range(n)]
    negatives = ["blurry, lowres"] * n
    return prompts, negatives, controls, list(seeds or range(100, 100 + n))


def _run(cfg, pipe, prompts, negatives, controls, seeds):
    return generate_from_config(pipe, cfg, prompts, negatives, controls, seeds, SIZE, SIZE)


def test_tiny_hybrid_uses_real_pipeline_classes(hybrid):
    cfg, pipe = hybrid
    assert type(pipe) is StableDiffusionControlNetPipeline
    assert isinstance(pipe.controlnet, MultiControlNetModel) and len(pipe.controlnet.nets) == 2
    assert isinstance(pipe.scheduler, UniPCMultistepScheduler)
    assert pipe.safety_checker is None
    assert len(pipe.tokenizer) == 49408
    assert cfg.model_ids()["controlnets"] == ["avatar3d/tiny-random-controlnet-openpose",
                                              "avatar3d/tiny-random-controlnet-depth"]
    # The two ControlNets have different weights (separate seeds).
    a, b = (next(n.parameters()) for n in pipe.controlnet.nets)
    assert not torch.equal(a, b)


def test_images_have_size_dtype_and_depend_on_seed_only(hybrid):
    cfg, pipe = hybrid
    prompts, negatives, controls, _ = _inputs(2)
    first = _run(cfg, pipe, prompts, negatives, controls, [7, 8])
    again = _run(cfg, pipe, prompts, negatives, controls, [7, 8])
    other = _run(cfg, pipe, prompts, negatives, controls, [7, 9])
    assert all(im.shape == (SIZE, SIZE, 3) and im.dtype == np.uint8 for im in first)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert np.array_equal(first[0], other[0]) and not np.array_equal(first[1], other[1])
    assert first[0].std() > 1.0  # not a constant image


def test_batch_of_four_equals_singles(hybrid):
    cfg, pipe = hybrid
    prompts, negatives, controls, seeds = _inputs(4)
    batch = _run(cfg, pipe, prompts, negatives, controls, seeds)
    for i in range(4):
        single = _run(cfg, pipe, [prompts[i]], [negatives[i]], [[c[i]] for c in controls], [seeds[i]])[0]
        assert np.array_equal(batch[i], single), f"sample {i} changed with its batch"


def test_tiny_weights_identical_on_rebuild_and_global_rng_untouched(hybrid):
    _, pipe = hybrid
    torch.manual_seed(42)
    expected_next = torch.rand(3)
    torch.manual_seed(42)
    cfg = PipelineConfig(preset="tiny", guidance="depth", steps=3, device="cpu")
    other = build_pipeline(cfg)
    assert torch.equal(torch.rand(3), expected_next)
    for name, tensor in other.unet.state_dict().items():
        assert torch.equal(tensor, pipe.unet.state_dict()[name]), name
    # The depth net alone equals the depth net of the hybrid pair.
    for name, tensor in other.controlnet.state_dict().items():
        assert torch.equal(tensor, pipe.controlnet.nets[1].state_dict()[name]), name


def test_save_and_load_from_local_folders_round_trip(hybrid, tmp_path):
    cfg, pipe = hybrid
    pipe.save_pretrained(tmp_path / "sd")
    for kind, net in zip(cfg.controlnet_kinds, pipe.controlnet.nets):
        net.save_pretrained(tmp_path / f"controlnet_{kind}")
    loaded_cfg = PipelineConfig(
        preset="sd15", base_model=str(tmp_path / "sd"), controlnet_openpose=str(tmp_path / "controlnet_openpose"),
        controlnet_depth=str(tmp_path / "controlnet_depth"), guidance="hybrid", steps=3, device="cpu")
    check_models_available(loaded_cfg)
    loaded = build_pipeline(loaded_cfg)
    inputs = _inputs(2)
    for x, y in zip(_run(cfg, pipe, *inputs), _run(loaded_cfg, loaded, *inputs)):
        assert np.array_equal(x, y)
    assert loaded_cfg.model_ids()["base_model"] == str(tmp_path / "sd")


def test_lora_weights_are_loaded_and_change_the_image(tmp_path):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    cfg = PipelineConfig(preset="tiny", guidance="openpose", steps=3, device="cpu")
    pipe = build_pipeline(cfg)
    inputs = _inputs(1, kinds=1)
    base = _run(cfg, pipe, *inputs)[0]
    with torch.random.fork_rng():
        torch.manual_seed(5)
        pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        for name, p in pipe.unet.named_parameters():
            if "lora_" in name:  # peft starts B at zero (a no-op adapter): make it do something
                p.data.normal_(0.0, 0.5)
    with_adapter = _run(cfg, pipe, *inputs)[0]
    StableDiffusionControlNetPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(pipe.unet))

    lora_cfg = PipelineConfig(preset="tiny", guidance="openpose", steps=3, device="cpu", lora=str(tmp_path / "lora"))
    fused = _run(lora_cfg, build_pipeline(lora_cfg), *inputs)[0]
    assert not np.array_equal(fused, base)
    # Fused weights equal the live adapter up to float rounding.
    assert np.abs(fused.astype(int) - with_adapter.astype(int)).max() <= 2
    assert lora_cfg.model_ids()["lora"] == str(tmp_path / "lora")


def test_missing_hub_model_offline_fails_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError) as err:
        check_model_available("nobody-here/no-such-model-x", "pipeline.base_model")
    msg = str(err.value)
    assert "\n" not in msg
    assert "nobody-here/no-such-model-x" in msg and "HF_HUB_OFFLINE=0" in msg and "local folder" in msg
    cfg = PipelineConfig(preset="sd15", base_model="nobody-here/no-such-model-x", guidance="depth", device="cpu")
    with pytest.raises(ModelUnavailableError, match="no-such-model-x"):
        build_pipeline(cfg)


def test_missing_local_folder_and_bad_values_fail(tmp_path):
    with pytest.raises(ModelUnavailableError, match="local folder not found"):
        check_model_available(str(tmp_path / "absent"), "pipeline.base_model")
    with pytest.raises(ValueError, match="pipeline.guidance='canny'"):
        PipelineConfig(guidance="canny").validate()
    with pytest.raises(ValueError, match="pipeline.scheduler"):
        PipelineConfig(scheduler="nope").validate()
    with pytest.raises(ValueError, match="pipeline.steps"):
        PipelineConfig(steps=0).validate()
    with pytest.raises(ValueError, match="float16"):
        build_pipeline(PipelineConfig(preset="tiny", dtype="float16", device="cpu"))


@pytest.mark.parametrize("scheduler", ["ddim", "euler_a"])
def test_other_schedulers_are_deterministic(scheduler):
    # euler_a draws fresh noise each step: the per-sample generators must drive it too.
    cfg = PipelineConfig(preset="tiny", guidance="openpose", steps=2, device="cpu", scheduler=scheduler)
    pipe = build_pipeline(cfg)
    assert type(pipe.scheduler).__name__ in ("DDIMScheduler", "EulerAncestralDiscreteScheduler")
    prompts, negatives, controls, seeds = _inputs(2, kinds=1)
    batch = _run(cfg, pipe, prompts, negatives, controls, seeds)
    single = _run(cfg, pipe, prompts[1:], negatives[1:], [c[1:] for c in controls], seeds[1:])
    assert np.array_equal(batch[1], single[0])


def test_gpu_label_without_cuda_runs_on_cpu_and_says_so_once(monkeypatch, caplog):
    # A Ray actor given num_gpus=1 on a node whose GPU is only a label (the fake multi-node
    # cluster) or whose CUDA is missing: it paints on the CPU and logs one line per process,
    # not one per batch or per build. (The real actor path: tests/cluster/test_autoscaling.py.)
    import avatar3d.datagen.pipeline as pipeline

    monkeypatch.setattr(pipeline, "assigned_gpu_ids", lambda: ["0"])
    monkeypatch.setattr(pipeline, "_said_cpu_despite_gpu", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = PipelineConfig(preset="tiny", guidance="openpose", steps=2, device="auto")
    with caplog.at_level("WARNING", logger="avatar3d.datagen.pipeline"):
        pipes = [build_pipeline(cfg), build_pipeline(PipelineConfig(preset="tiny", guidance="openpose", device="cpu"))]
        assert pipeline.resolve_device("auto") == "cpu"
    assert all(p.device.type == "cpu" for p in pipes)
    said = [r.getMessage() for r in caplog.records if "holds Ray GPU" in r.getMessage()]
    assert len(said) == 1, said
    assert "GPU 0" in said[0] and "on the CPU" in said[0] and "no CUDA device" in said[0]
    # An explicit device=cuda still fails at once, and names the GPU Ray gave.
    with pytest.raises(ValueError, match="Ray gave this process GPU 0"):
        pipeline.resolve_device("cuda")


def test_no_gpu_label_no_message(monkeypatch, caplog):
    import avatar3d.datagen.pipeline as pipeline

    assert pipeline.assigned_gpu_ids() == []  # outside Ray
    monkeypatch.setattr(pipeline, "_said_cpu_despite_gpu", False)
    with caplog.at_level("WARNING", logger="avatar3d.datagen.pipeline"):
        assert pipeline.resolve_device("cpu") == "cpu"
    assert not [r for r in caplog.records if "holds Ray GPU" in r.getMessage()]
