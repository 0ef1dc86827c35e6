"""The prior learns "image -> w": trained briefly on pairs from a micro generator, checked on held-out images.

Training runs the plain loop in-process (the Ray path is tests/prior/test_ray_jobs.py).
For every held-out pair (its front render is the input image, its w the truth):

- embedding space: CLIP distance between the input's embedding and the
  embedding of the front render of the prior's w, against the same for a w
  of a random other identity;
- W space: distance of the prior's w to the true w, against random w;
- controls that never see the input (another identity's embedding, a zero
  embedding, guidance 0, the mean w): the prior must beat each by a margin.

The generator is untrained, so renders differ by w in subtle ways; the
margins asserted are well inside what was measured (printed with -s).
"""
import io
import json
import numpy as np
import pytest
import torch
from PIL import Image

from avatar3d.cli import main
from avatar3d.gan.optim import OptimizerSpec
from avatar3d.prior.encoder import tiny_encoder
from avatar3d.prior.loop import PriorLoopOptions, PriorTrainer, array_batches, training_loop
from avatar3d.prior.model import PriorSize, build_prior, set_w_stats, train_scheduler
from avatar3d.prior.pairs import read_pairs, w_statistics
from avatar3d.prior.pipeline import ImageToAvatarPipeline
from avatar3d.prior.views import render_w
from avatar3d.gan.snapshot import load_snapshot
from avatar3d.training.engines import make_engine
from avatar3d.training.loop import LoopHooks

torch.set_num_threads(1)
TRAIN_STEPS = 400
GUIDANCE = 2.0


@pytest.fixture(scope="module")
def pipe(train_pairs, micro_snapshot):
    pairs = read_pairs(train_pairs)
    torch.manual_seed(0)
    prior = build_prior(pairs.w.shape[1], pairs.embedding.shape[1], PriorSize.preset("tiny"))
    set_w_stats(prior, *map(torch.from_numpy, w_statistics(train_pairs)))
    engine = make_engine(prior, OptimizerSpec(lr=1e-3, betas=(0.9, 0.999)), "plain")
    trainer = PriorTrainer(engine, train_scheduler("sample"), seed=0)
    result = training_loop(trainer, array_batches(pairs.w, pairs.embedding, 64, seed=0),
                           PriorLoopOptions(total_steps=TRAIN_STEPS, steps_per_tick=100, checkpoint_ticks=100),
                           LoopHooks(print=lambda *_: None))
    assert result.step == TRAIN_STEPS
    return ImageToAvatarPipeline(tiny_encoder(), prior, trainer.scheduler, load_snapshot(micro_snapshot).generator,
                                 defaults={"guidance_scale": GUIDANCE, "num_inference_steps": 25})


def _fronts(pairs):
    return [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in pairs.image_png]


def test_prior_w_renders_closer_to_the_input_than_random_w(pipe, train_pairs, heldout_pairs):
    held = read_pairs(heldout_pairs, with_images=True)
    train = read_pairs(train_pairs)
    out = pipe(_fronts(held), seed=100, yaws=[0.0])
    # Random identities: w of training pairs, drawn without looking at the input.
    random_w = torch.from_numpy(train.w[np.random.default_rng(5).choice(len(train.w), len(held.w), replace=False)])
    random_renders = render_w(pipe.generator, random_w, [0.0], seeds=range(100, 100 + len(held.w)))[:, 0]

    target = torch.from_numpy(held.embedding)
    assert torch.allclose(out.embeddings, target, atol=1e-4)  # the pipeline embeds inputs as the pairs did
    enc = pipe.image_encoder
    cos_prior = 1 - (enc.embed(out.views[:, 0]) * target).sum(1)
    cos_random = 1 - (enc.embed(random_renders) * target).sum(1)
    w_prior = np.linalg.norm(out.w.numpy() - held.w, axis=1)
    w_random = np.linalg.norm(random_w.numpy() - held.w, axis=1)
    wins = float((cos_prior < cos_random).float().mean())
    print(f"\nheld-out ({len(held.w)}), guidance {GUIDANCE}, {TRAIN_STEPS} steps: "
          f"CLIP cosine distance prior {cos_prior.mean():.4f} vs random {cos_random.mean():.4f} "
          f"(prior closer for {wins:.0%}); |w - w_true| prior {w_prior.mean():.3f} vs random {w_random.mean():.3f}")
    assert cos_prior.mean() < 0.6 * cos_random.mean()
    assert wins >= 0.6
    assert w_prior.mean() < 0.92 * w_random.mean()


def test_guidance_scale_changes_the_result_and_seed_fixes_it(pipe, heldout_pairs):
    image = _fronts(read_pairs(heldout_pairs, with_images=True))[0]
    a = pipe(image, seed=3, guidance_scale=1.0, yaws=[0.0, 90.0])
    again = pipe(image, seed=3, guidance_scale=1.0, yaws=[0.0, 90.0])
    assert torch.equal(a.w, again.w) and np.array_equal(a.views, again.views)
    b = pipe(image, seed=3, guidance_scale=4.0, yaws=[0.0, 90.0])
    assert (a.w - b.w).norm() > 1e-2 and not np.array_equal(a.views, b.views)
    c = pipe(image, seed=4, guidance_scale=1.0, yaws=[0.0, 90.0])
    assert (a.w - c.w).norm() > 1e-2
    assert a.views.shape == (1, 2, 32, 32, 3) and a.views.dtype == np.uint8
    assert not np.array_equal(a.views[0, 0], a.views[0, 1])  # two views, two images
    # UniPC samples the same model; a few steps fewer, still seeded.
    u = pipe(image, seed=3, sampler="unipc", num_inference_steps=10, yaws=[0.0])
    assert torch.equal(u.w, pipe(image, seed=3, sampler="unipc", num_inference_steps=10, yaws=[0.0]).w)


def test_pipeline_folder_round_trip_and_cli(pipe, heldout_pairs, micro_snapshot, tmp_path, capsys):
    folder = pipe.save_pretrained(tmp_path / "prior", micro_snapshot)
    loaded = ImageToAvatarPipeline.from_pretrained(folder)
    image = _fronts(read_pairs(heldout_pairs, with_images=True))[1]
    a, b = pipe(image, seed=9, yaws=[0.0]), loaded(image, seed=9, yaws=[0.0])
    assert torch.allclose(a.w, b.w, atol=1e-5) and np.abs(a.views.astype(int) - b.views).max() <= 1

    # The CLI, in this process (its own subprocess would spend most of its time importing torch & co).
    Image.fromarray(image).save(tmp_path / "in.png")
    out = tmp_path / "avatar"
    rc = main(["image-to-avatar", str(tmp_path / "in.png"), "--out", str(out), "--prior", str(folder), "--seed", "9",
               "--views", "4", "--turntable-frames", "6", "--mesh-resolution", "32",
               "--mesh-iso", "-1.5"])  # the untrained micro G: sigma spans about [-2, -1]
    assert rc == 0
    record = json.loads((out / "avatar.json").read_text())
    assert record["seed"] == 9 and record["guidance_scale"] == GUIDANCE and len(record["yaws"]) == 4
    assert record["prior"] == str(folder) and record["image_encoder"] == "tiny"  # what made the avatar
    assert record["generator"] == "the prior's own"
    assert np.allclose(np.load(out / "w.npy"), a.w[0].numpy(), atol=1e-5)  # same seed, same avatar as in-process
    assert len(list(out.glob("view_yaw*.png"))) == 4
    gif = Image.open(out / "turntable.gif")
    assert gif.n_frames == 6 and gif.size == (32, 32)
    assert record["mesh"] and (out / "mesh.ply").stat().st_size > 0
    capsys.readouterr()

    # Bad input: one line, exit 2, before any model loads.
    (tmp_path / "bad.png").write_bytes(b"GIF89a broken")
    rc = main(["image-to-avatar", str(tmp_path / "bad.png"), "--out", str(tmp_path / "x"), "--prior", str(folder)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "not a readable image" in err
    rc = main(["image-to-avatar", str(tmp_path / "in.png"), "--out", str(tmp_path / "x"), "--prior",
               str(tmp_path / "no-prior")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "not a prior folder" in err
    # An earlier avatar is not overwritten silently: refused in one line, kept byte for byte; --overwrite replaces it.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rc = main(["image-to-avatar", str(tmp_path / "in.png"), "--out", str(out), "--prior", str(folder), "--seed", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "already holds an avatar (avatar.json); pass --overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    rc = main(["image-to-avatar", str(tmp_path / "in.png"), "--out", str(out), "--prior", str(folder), "--seed", "3",
               "--views", "4", "--turntable-frames", "0", "--mesh-resolution", "0", "--overwrite",
               "--generator", str(micro_snapshot)])
    record = json.loads((out / "avatar.json").read_text())
    assert rc == 0 and record["seed"] == 3 and record["generator"] == str(micro_snapshot)  # the override, recorded



def _sample_from_embeddings(pipe, embeddings, seed, guidance):
    """Step 3 of the pipeline (one seeded sample per row, the pipeline's sampler and steps) on chosen embeddings."""
    from avatar3d.prior.model import sample_w, sampling_scheduler

    scheduler = sampling_scheduler(pipe.scheduler.config, pipe.defaults["sampler"])
    steps = pipe.defaults["num_inference_steps"]
    return torch.cat([sample_w(pipe.prior, scheduler, embeddings[i:i + 1], guidance, steps,
                               torch.Generator().manual_seed(seed + i)) for i in range(len(embeddings))])


# Controls that never look at the input image, and the margin the prior must keep over each.
# Measured (400 steps, guidance 2, 16 held-out identities; ratio = prior / control, lower is better):
#   CLIP cosine distance of the front render to the input's embedding:
#     shuffled 0.21 (prior closer for 88% of inputs), zeroed 0.40 (62%), guidance 0 0.40 (62%), mean w 0.41 (62%)
#   |w - w_true|: shuffled 0.72, zeroed 0.83, guidance 0 0.83, mean w 1.03.
# The mean w is the L2-optimal constant and the prior returns a posterior *sample* (expected squared distance
# about twice the posterior variance), so in W it is at parity with the mean (even 8 samples averaged: 3.99 vs
# 4.06): the mean w is held to the render/CLIP margin only. Limits: measured ratio x ~1.1-1.5.
CLIP_LIMIT = {"shuffled": 0.35, "zeroed": 0.6, "guidance0": 0.6, "mean_w": 0.6}
W_LIMIT = {"shuffled": 0.8, "zeroed": 0.92, "guidance0": 0.92}
MIN_WINS = {"shuffled": 0.75, "zeroed": 0.55, "guidance0": 0.55, "mean_w": 0.55}


def test_prior_beats_controls_that_ignore_the_image(pipe, train_pairs, heldout_pairs):
    """A prior (or pipeline) that ignores its input, or conditions on the wrong one, loses to these controls:
    another identity's embedding (shuffled), no embedding (zeroed), the unconditional model (guidance 0) and
    the average identity (the training pairs' mean w)."""
    held = read_pairs(heldout_pairs, with_images=True)
    n, seed = len(held.w), 100
    out = pipe(_fronts(held), seed=seed, yaws=[0.0])
    target = torch.from_numpy(held.embedding)
    shuffle = np.roll(np.arange(n), 1)  # every row gets another identity's embedding
    controls = {
        "shuffled": _sample_from_embeddings(pipe, target[shuffle], seed, GUIDANCE),
        "zeroed": _sample_from_embeddings(pipe, torch.zeros_like(target), seed, GUIDANCE),
        "guidance0": pipe(_fronts(held), seed=seed, guidance_scale=0.0, yaws=[0.0]).w,
        "mean_w": torch.from_numpy(w_statistics(train_pairs)[0]).expand(n, -1).clone(),
    }
    enc = pipe.image_encoder

    def clip_distance(w):  # front renders with the same ray-jitter seeds as the pipeline's
        front = render_w(pipe.generator, w, [0.0], seeds=range(seed, seed + n))[:, 0]
        return 1 - (enc.embed(front) * target).sum(1)

    cos_prior = clip_distance(out.w)
    assert np.abs(cos_prior.numpy() - clip_distance(out.w).numpy()).max() < 1e-6  # renders are deterministic
    w_prior = np.linalg.norm(out.w.numpy() - held.w, axis=1)
    lines, failures = [f"prior: CLIP {cos_prior.mean():.4f} |w - w_true| {w_prior.mean():.3f}"], []
    for name, w in controls.items():
        cos_c = clip_distance(w)
        w_c = np.linalg.norm(w.numpy() - held.w, axis=1)
        ratio, wins, w_ratio = float(cos_prior.mean() / cos_c.mean()), float((cos_prior < cos_c).float().mean()), \
            float(w_prior.mean() / w_c.mean())
        lines.append(f"{name}: CLIP {cos_c.mean():.4f} (prior/control {ratio:.2f}, prior closer {wins:.0%}); "
                     f"|w - w_true| {w_c.mean():.3f} (prior/control {w_ratio:.2f})")
        if ratio >= CLIP_LIMIT[name] or wins < MIN_WINS[name] or w_ratio >= W_LIMIT.get(name, np.inf):
            failures.append(name)
    print("\n" + "\n".join(lines))
    assert not failures, "\n".join(lines)
    # The controls were sampled by the pipeline's own step 3: with the true embeddings it gives the pipeline's w.
    assert torch.equal(_sample_from_embeddings(pipe, out.embeddings, seed, GUIDANCE), out.w)
