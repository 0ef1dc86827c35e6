"""Shared pieces of the evaluation tests: a micro generator snapshot and a small FID feature extractor."""
import numpy as np
import torch
import torch.nn.functional as F

from avatar3d.gan import GANConfig, TriPlaneGenerator
from avatar3d.gan.snapshot import save_snapshot
from tests.training.fixtures import MICRO_GAN


def micro_generator(seed: int = 0) -> TriPlaneGenerator:
    torch.manual_seed(seed)
    return TriPlaneGenerator(GANConfig.tiny(**MICRO_GAN)).eval().requires_grad_(False)


def write_micro_snapshot(path, seed: int = 0):
    G = micro_generator(seed)
    return save_snapshot(path, G, G.cfg.to_dict(), {"kimg": 0.0})


def surface_iso(G, seed: int = 0) -> float:
    """A raw-density level the untrained micro generator's field crosses (its median in the box)."""
    from avatar3d.evaluation.mesh import seed_latent

    with torch.no_grad():
        planes = G.synthesize_planes(seed_latent(G, seed), noise_mode="const")
        pts = torch.rand(1, 4096, 3, generator=torch.Generator().manual_seed(0)) - 0.5
        return float(G.sample_density(planes, pts).sigma.median())


class SmallFeatures:
    """A fixed, seeded random conv net (32 px in, 24-d out): FID maths without Inception's cost.
    Features = mean colour (3) + pooled responses of two random conv layers (21)."""

    name = "test-random-conv"

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(16, 3, 3, 3, generator=g) / 3
        self.w2 = torch.randn(21, 16, 3, 3, generator=g) / 12

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        x = F.interpolate(x, size=(32, 32), mode="area")
        h = F.leaky_relu(F.conv2d(x, self.w1, stride=2), 0.2)
        h = F.leaky_relu(F.conv2d(h, self.w2, stride=2), 0.2)
        return torch.cat([x.mean((2, 3)), h.mean((2, 3))], 1).double().numpy()


def colour_fields(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Another image family for FID's "far" side: smooth random colour fields (4x4 colours, bicubic-upsampled)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
                                .resize((size, size), Image.BICUBIC)) for _ in range(n)])


class RecordedNetwork:
    """Wraps an Inception network (the ``_net`` of InceptionFeatures): remembers each input row it ran on
    (a hash of its float32 bytes) and its features. Called again on an identical row it returns the recorded
    features (the same network on the same input) instead of spending ~0.3 s of CPU on it; ``hits`` and
    ``misses`` count those calls. Other rows go through the network."""

    def __init__(self, net):
        self.net, self.seen, self.hits, self.misses = net, {}, 0, 0

    @staticmethod
    def _key(row: torch.Tensor) -> bytes:
        import hashlib

        return hashlib.sha256(row.detach().to(torch.float32).contiguous().numpy().tobytes()).digest()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        keys = [self._key(row) for row in x]
        missing = [i for i, k in enumerate(keys) if k not in self.seen]
        if missing:
            feats = self.net(x[missing]).reshape(len(missing), -1)
            for i, f in zip(missing, feats):
                self.seen[keys[i]] = f.detach().clone()
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.stack([self.seen[k] for k in keys])
