"""FID of a generator against its multi-view dataset, overall and per view group (docs/method.md section 7).

One code path for training-time and offline evaluation::

    result = evaluate_fid(G, "outputs/ds", num_fakes=10_000)
    result.overall, result.per_view["back"], result.protocol

Protocol (EG3D's, recorded with every number):

- fakes: ``z ~ N(0, I)`` from ``torch.Generator().manual_seed(seed)``; each
  fake's camera is a dataset label drawn uniformly with replacement (numpy
  ``default_rng(seed)``); the mapping is conditioned on that same camera;
  truncation ``psi`` (default 1, none); constant synthesis noise; the ray
  jitter is seeded too, so a protocol gives the same number twice.
- reals: every dataset image, resized (Lanczos, as the trainer does) to the
  generator's output resolution.
- per view group: fakes and reals grouped by ``view_group(yaw)`` of their
  camera (front |yaw| <= 45, back |yaw| >= 135, side otherwise). A group
  needs at least 2 images on each side, else its FID is NaN.
- reference statistics (mu, sigma per group) are computed once per dataset,
  resolution and extractor and cached as
  ``<cache>/fid_stats/<dataset hash>-<extractor>-r<resolution>.npz``.
  The dataset hash is SHA-256 over each shard's file name and byte size and
  the ``id`` column in file order: copies of a dataset share it (no mtimes),
  any added, removed or rewritten shard changes it.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from avatar3d.datagen.dataset import TRAIN_COLUMNS, decode_png, open_dataset
from avatar3d.evaluation.features import get_extractor
from avatar3d.gan.samples import to_uint8
from avatar3d.runtime import cache_dir as default_cache
from avatar3d.atomic import atomic_path, atomic_write
from avatar3d.scene.cameras import label_to_yaw_pitch
from avatar3d.scene.pose_bins import VIEW_GROUPS, view_group

GROUPS = ("all",) + VIEW_GROUPS
CAMERA_PROTOCOL = "dataset labels, uniform with replacement; mapping conditioned on the render camera (EG3D)"


@dataclass
class FeatureStats:
    """Mean and covariance of features, per group (``all``, ``front``, ``side``, ``back``)."""

    mu: dict[str, np.ndarray]
    sigma: dict[str, np.ndarray]
    count: dict[str, int]

    @classmethod
    def from_features(cls, feats: np.ndarray, groups: np.ndarray) -> "FeatureStats":
        mu, sigma, count = {}, {}, {}
        for g in GROUPS:
            sel = feats if g == "all" else feats[groups == g]
            count[g] = int(len(sel))
            if len(sel) >= 2:
                mu[g] = sel.mean(0)
                sigma[g] = np.cov(sel, rowvar=False)
        return cls(mu, sigma, count)

    def save(self, path: Path) -> None:
        arrays = {}
        for g in self.mu:
            arrays[f"{g}_mu"], arrays[f"{g}_sigma"] = self.mu[g], self.sigma[g]
        arrays["count_json"] = np.array(json.dumps(self.count))
        with atomic_path(path, suffix=".npz") as tmp:  # a crash never leaves a truncated cache entry
            np.savez(tmp, **arrays)

    @classmethod
    def load(cls, path: Path) -> "FeatureStats":
        with np.load(path, allow_pickle=False) as z:
            count = json.loads(str(z["count_json"]))
            mu = {g: z[f"{g}_mu"] for g in GROUPS if f"{g}_mu" in z}
            sigma = {g: z[f"{g}_sigma"] for g in GROUPS if f"{g}_sigma" in z}
        return cls(mu, sigma, count)


@dataclass
class FIDResult:
    overall: float
    per_view: dict[str, float]
    protocol: dict
    seconds: dict[str, float] = field(default_factory=dict)
    reference_cached: bool = False

    def metrics(self, prefix: str = "fid") -> dict[str, float]:
        """Flat metrics for MLflow: ``fid``, ``fid_front``, ``fid_side``, ``fid_back``."""
        out = {prefix: self.overall}
        out.update({f"{prefix}_{g}": v for g, v in self.per_view.items()})
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    def save_json(self, path: str | Path) -> Path:
        # NaN (a group too small) is written as null: strict JSON readers refuse NaN.
        return atomic_write(path, json.dumps(_nan_to_none(self.to_dict()), indent=2, allow_nan=False) + "\n")

    def summary(self) -> str:
        views = "  ".join(f"{g} {v:.2f} (n={self.protocol['num_fakes_per_view'][g]})"
                          for g, v in self.per_view.items())
        return (f"FID {self.overall:.2f} over {self.protocol['num_fakes']} fakes vs "
                f"{self.protocol['num_real']} reals [{self.protocol['feature_extractor']}]"
                + (f"\nper view: {views}" if views else ""))


def _nan_to_none(value):
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


# -- Frechet distance ---------------------------------------------------------------

def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "clean-fid") -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2).

    ``clean-fid``: clean-fid's own function (scipy ``sqrtm`` of S1 S2; ~14 s
    at 2048-d on one core). ``eigh``: the same number through symmetric
    eigen-decompositions, tr (S1 S2)^1/2 = sum sqrt(eig(S1^1/2 S2 S1^1/2))
    (S1 S2 is similar to that PSD matrix), ~7x faster at 2048-d.
    """
    if method == "clean-fid":
        # Heavy (~3 s with torch loaded: clean-fid's whole FID module); every Ray training worker imports
        # this module, and the "eigh" method (FIDOptions' default) does without it.
        from cleanfid.fid import frechet_distance as cleanfid_frechet

        return float(cleanfid_frechet(mu1, sigma1, mu2, sigma2))
    if method == "eigh":
        w, v = np.linalg.eigh(sigma1)
        root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        eig = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
        diff = np.asarray(mu1) - np.asarray(mu2)
        return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(np.clip(eig, 0, None)).sum())
    raise ValueError(f"method={method!r}: pass 'clean-fid' or 'eigh'")


def fid_between(a: FeatureStats, b: FeatureStats, group: str = "all", method: str = "clean-fid") -> float:
    if group not in a.mu or group not in b.mu:
        return float("nan")
    return frechet_distance(a.mu[group], a.sigma[group], b.mu[group], b.sigma[group], method)


# -- the dataset side ---------------------------------------------------------------

def dataset_hash(dataset_dir: str | Path) -> str:
    """Content hash of a dataset (:meth:`avatar3d.datagen.dataset.Dataset.fingerprint`)."""
    return open_dataset(dataset_dir, columns=("id",), field="--data", check_images=False).fingerprint()


def iter_dataset(dataset_dir: str | Path, resolution: int, batch_size: int = 64):
    """-> batches of (images (B, R, R, 3) uint8, camera labels (B, 25)) over every row."""
    ds = open_dataset(dataset_dir, columns=TRAIN_COLUMNS, field="--data")
    for rows in ds.iter_batches(["id", "image_png", "camera"], batch_size):
        images = np.stack([decode_png(b, resolution, where=f"--data: row id {row_id}")
                           for row_id, b in zip(rows["id"], rows["image_png"])])
        yield images, np.asarray(rows["camera"], dtype=np.float64)


def dataset_cameras(dataset_dir: str | Path) -> np.ndarray:
    ds = open_dataset(dataset_dir, columns=("camera",), field="--data", check_images=False)
    return np.asarray(ds.read(["camera"]).column("camera").to_pylist(), dtype=np.float64)


def camera_groups(cameras: np.ndarray) -> np.ndarray:
    yaw, _ = label_to_yaw_pitch(cameras)
    return np.atleast_1d(view_group(yaw))


def reference_stats(dataset_dir: str | Path, extractor, resolution: int, cache_dir: str | Path | None = None,
                    digest: str | None = None) -> tuple[FeatureStats, Path, bool]:
    """Real-image statistics, from the cache if present. -> (stats, cache file, was cached).
    ``digest``: the dataset hash when the caller has it already."""
    digest = digest or dataset_hash(dataset_dir)
    path = Path(cache_dir or default_cache()) / "fid_stats" / f"{digest}-{extractor.name}-r{resolution}.npz"
    if path.is_file():
        return FeatureStats.load(path), path, True
    feats, groups = [], []
    for images, cams in iter_dataset(dataset_dir, resolution):
        feats.append(extractor(images))
        groups.append(camera_groups(cams))
    stats = FeatureStats.from_features(np.concatenate(feats), np.concatenate(groups))
    stats.save(path)
    return stats, path, False


# -- the generator side -------------------------------------------------------------

@contextlib.contextmanager
def _eval_mode(G):
    """Eval mode and forked RNG streams: evaluating mid-training leaves training's randomness untouched."""
    was_training = G.training
    device = next(G.parameters()).device
    cuda = [device] if device.type == "cuda" else []
    G.eval()
    try:
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            yield device
    finally:
        G.train(was_training)


def generate_fakes(G, cameras: np.ndarray, num: int, seed: int = 0, truncation_psi: float = 1.0,
                   batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``num`` images (N, R, R, 3) uint8 of G, cameras drawn from ``cameras`` -> (images, their cameras)."""
    rng = np.random.default_rng(seed)
    picked = cameras[rng.integers(0, len(cameras), size=num)]
    z_gen = torch.Generator().manual_seed(seed)
    out = []
    with _eval_mode(G) as device:
        torch.manual_seed(seed)  # the renderer's ray jitter
        for i in range(0, num, batch_size):
            c = torch.tensor(picked[i:i + batch_size], dtype=torch.float32, device=device)
            z = torch.randn(len(c), G.z_dim, generator=z_gen).to(device)
            ws = G.mapping(z, c, truncation_psi=truncation_psi)
            out.append(to_uint8(G.synthesis(ws, c, noise_mode="const").image))
    return np.concatenate(out), picked


def evaluate_fid(G, dataset_dir: str | Path, num_fakes: int = 10_000, seed: int = 0, truncation_psi: float = 1.0,
                 extractor=None, cache_dir: str | Path | None = None, per_view: bool = True,
                 batch_size: int = 8, method: str = "eigh") -> FIDResult:
    """FID of generator ``G`` against the dataset at ``dataset_dir`` (protocol in the module docstring).

    ``extractor``: a :class:`~avatar3d.evaluation.features.FeatureExtractor`
    (default: Inception, clean-fid's weights where present, else fid-helper's).
    """
    if num_fakes < 2:
        raise ValueError(f"num_fakes: {num_fakes} is too few for a covariance; pass at least 2 (10000 is usual)")
    if not 0.0 <= truncation_psi <= 1.0:
        raise ValueError(f"truncation_psi: {truncation_psi} must be in [0, 1] (1 = no truncation)")
    if extractor is None:
        extractor = get_extractor("inception", device=next(G.parameters()).device)
    resolution = int(G.cfg.output_resolution)
    t0 = time.perf_counter()
    digest = dataset_hash(dataset_dir)
    real, cache_file, cached = reference_stats(dataset_dir, extractor, resolution, cache_dir, digest)
    t1 = time.perf_counter()
    images, cams = generate_fakes(G, dataset_cameras(dataset_dir), num_fakes, seed, truncation_psi, batch_size)
    t2 = time.perf_counter()
    fake = FeatureStats.from_features(extractor(images), camera_groups(cams))
    t3 = time.perf_counter()
    overall = fid_between(fake, real, "all", method)
    views = {g: fid_between(fake, real, g, method) for g in VIEW_GROUPS} if per_view else {}
    t4 = time.perf_counter()
    protocol = {
        "metric": "fid", "num_fakes": num_fakes, "num_real": real.count["all"], "seed": seed,
        "truncation_psi": truncation_psi, "camera_distribution": CAMERA_PROTOCOL, "noise_mode": "const",
        "batch_size": batch_size,  # the ray jitter of a fake depends on its batch: part of the protocol
        "resolution": resolution, "dataset": str(dataset_dir), "dataset_hash": digest,
        "feature_extractor": extractor.name, "frechet": method,
        "view_groups": "front |yaw|<=45, side, back |yaw|>=135",
        "num_fakes_per_view": {g: fake.count[g] for g in VIEW_GROUPS},
        "num_real_per_view": {g: real.count[g] for g in VIEW_GROUPS},
        "reference_stats": str(cache_file),
    }
    seconds = {"reference_stats": t1 - t0, "generate": t2 - t1, "features": t3 - t2, "frechet": t4 - t3}
    return FIDResult(overall=overall, per_view=views, protocol=protocol, seconds=seconds, reference_cached=cached)
