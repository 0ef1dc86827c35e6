"""The denoiser, its loss and CFG sampling, on random data (no generator needed)."""
import pytest
import torch

from avatar3d.prior.model import (PriorSize, build_prior, diffusion_loss, normalize_w, sample_w, sampling_scheduler,
                                  set_w_stats, train_scheduler)

torch.set_num_threads(1)
W_DIM, E_DIM = 24, 16


@pytest.fixture
def prior():
    torch.manual_seed(0)
    p = build_prior(W_DIM, E_DIM, PriorSize.preset("tiny"))
    set_w_stats(p, torch.linspace(-1, 1, W_DIM), torch.linspace(0.5, 2, W_DIM))
    return p


def test_shapes_and_frozen_w_stats(prior):
    assert prior.config.embedding_dim == W_DIM and prior.config.embedding_proj_dim == E_DIM
    out = prior(torch.randn(3, W_DIM), torch.tensor([0, 10, 999]), proj_embedding=torch.randn(3, E_DIM))
    assert out.predicted_image_embedding.shape == (3, W_DIM)
    assert not prior.clip_mean.requires_grad and not prior.clip_std.requires_grad
    w = torch.randn(5, W_DIM)
    assert torch.allclose(prior.post_process_latents(normalize_w(prior, w)), w, atol=1e-5)
    with pytest.raises(ValueError, match="std must be > 0"):
        set_w_stats(prior, torch.zeros(W_DIM), torch.zeros(W_DIM))
    with pytest.raises(ValueError, match="shape"):
        set_w_stats(prior, torch.zeros(3), torch.ones(3))


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon", "v_prediction"])
def test_loss_falls_when_fitting_a_conditional_map(prediction_type):
    """w = A e: a few dozen Adam steps must lower the denoising loss well below its start."""
    torch.manual_seed(0)
    prior = build_prior(W_DIM, E_DIM, PriorSize.preset("tiny"))
    sched = train_scheduler(prediction_type, 100)
    A = torch.randn(E_DIM, W_DIM)
    opt = torch.optim.Adam([p for p in prior.parameters() if p.requires_grad], lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        e = torch.nn.functional.normalize(torch.randn(64, E_DIM, generator=gen), dim=1)
        loss = diffusion_loss(prior, sched, e @ A, e, cond_drop_prob=0.1, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"{prediction_type}: loss {first:.3f} -> {last:.3f}")
    assert last < 0.8 * first


def test_condition_drop_probability_is_used(prior):
    """With cond_drop_prob=1 the loss cannot depend on the embedding; with 0 it does."""
    sched = train_scheduler("sample", 100)
    w, e1, e2 = torch.randn(8, W_DIM), torch.randn(8, E_DIM), torch.randn(8, E_DIM)

    def loss(e, p):
        return diffusion_loss(prior, sched, w, e, p, torch.Generator().manual_seed(3)).item()

    assert loss(e1, 1.0) == loss(e2, 1.0)
    assert loss(e1, 0.0) != loss(e2, 0.0)


@pytest.mark.parametrize("sampler", ["ddim", "unipc"])
def test_sampling_is_seeded_and_guidance_changes_the_result(prior, sampler):
    sched = sampling_scheduler(train_scheduler("sample", 100).config, sampler)
    e = torch.nn.functional.normalize(torch.randn(2, E_DIM), dim=1)

    def draw(scale, seed=0):
        return sample_w(prior, sched, e, guidance_scale=scale, num_steps=5, generator=torch.Generator().manual_seed(seed))

    a = draw(3.0)
    assert a.shape == (2, W_DIM) and torch.isfinite(a).all()
    assert torch.equal(a, draw(3.0))
    assert not torch.allclose(a, draw(3.0, seed=1))
    assert (a - draw(1.0)).abs().max() > 1e-4
    # Scale 0 is the unconditional model: the embedding no longer matters.
    u1 = draw(0.0)
    u2 = sample_w(prior, sched, -e, guidance_scale=0.0, num_steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(u1, u2, atol=1e-6)


def test_save_pretrained_round_trip_keeps_w_stats(prior, tmp_path):
    from diffusers import PriorTransformer

    prior.save_pretrained(tmp_path)
    loaded = PriorTransformer.from_pretrained(tmp_path)
    assert torch.equal(loaded.clip_mean, prior.clip_mean) and torch.equal(loaded.clip_std, prior.clip_std)
    x, t, e = torch.randn(2, W_DIM), torch.tensor([5, 50]), torch.randn(2, E_DIM)
    with torch.no_grad():
        assert torch.allclose(loaded(x, t, proj_embedding=e).predicted_image_embedding,
                              prior(x, t, proj_embedding=e).predicted_image_embedding)


def test_bad_options():
    with pytest.raises(ValueError, match="prediction_type"):
        train_scheduler("x0")
    with pytest.raises(ValueError, match="sampler"):
        sampling_scheduler(train_scheduler().config, "euler")
    with pytest.raises(ValueError, match="preset"):
        PriorSize.preset("huge")
