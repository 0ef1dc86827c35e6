"""FID: same-distribution splits close and another family far (test features and the real Inception), equal to
clean-fid's own compute_fid on the same images, the protocol, the reference-statistics cache."""
import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from avatar3d.evaluation.fid import (FeatureStats, camera_groups, dataset_hash, evaluate_fid, fid_between,
                                     frechet_distance, iter_dataset, reference_stats)
from tests.evaluation.helpers import (RecordedNetwork, SmallFeatures, colour_fields, micro_generator,
                                      write_micro_snapshot)
from tests.training.fixtures import write_head_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid_data")
    return {"a": write_head_dataset(root / "a", n=48, size=32, seed=0, rows_per_file=16),
            "b": write_head_dataset(root / "b", n=48, size=32, seed=1, rows_per_file=16)}


def _stats(images, cams, extractor):
    return FeatureStats.from_features(extractor(images), camera_groups(cams))


def _load(folder):
    batches = list(iter_dataset(folder, 32))
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def test_frechet_eigh_equals_clean_fid():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 16)), rng.normal(0.3, 1.5, size=(200, 16)) @ rng.normal(size=(16, 16))
    args = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    ref = frechet_distance(*args, method="clean-fid")
    assert ref > 1.0
    assert frechet_distance(*args, method="eigh") == pytest.approx(ref, rel=1e-8)
    with pytest.raises(ValueError, match="method"):
        frechet_distance(*args, method="nope")
    # Fewer samples than dimensions (rank-deficient covariances), as FID on a few images in 2048-d is.
    a, b = rng.normal(size=(8, 64)), rng.normal(0.2, 1.3, size=(8, 64))
    args = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy: "Matrix is singular"
        ref = frechet_distance(*args, method="clean-fid")
    assert ref > 1.0 and frechet_distance(*args, method="eigh") == pytest.approx(ref, rel=1e-6)


def test_same_distribution_splits_are_close_order_free_and_far_below_another_family(datasets, tmp_path):
    """FID(A, A) = 0 holds by construction; what FID must do is put disjoint samples of one distribution close
    together and another image family far away, whatever the order of the images."""
    ext = SmallFeatures()
    real, _, cached = reference_stats(datasets["a"], ext, 32, tmp_path)
    assert not cached and real.count["all"] == 48 == sum(real.count[g] for g in ("front", "side", "back"))
    a_images, a_cams = _load(datasets["a"])
    b_images, b_cams = _load(datasets["b"])  # the same distribution (head renders), other samples (seed 1)
    assert fid_between(_stats(a_images, a_cams, ext), real) == pytest.approx(0, abs=1e-9)  # same set: sanity only
    far_images = colour_fields(48, 32, seed=2)  # another image family
    fid_same = fid_between(_stats(b_images, b_cams, ext), real)
    fid_far = fid_between(_stats(far_images, b_cams, ext), real)
    # Order free: a permutation of either side changes nothing, and FID is symmetric.
    perm = np.random.default_rng(0).permutation(48)
    assert fid_between(_stats(b_images[perm], b_cams[perm], ext), real) == pytest.approx(fid_same, rel=1e-9)
    assert fid_between(real, _stats(b_images, b_cams, ext)) == pytest.approx(fid_same, rel=1e-9)
    # Random disjoint halves of the 96 images: each split is close, all far below the other family.
    # Measured (24-d test features): halves 0.006-0.032, A vs B 0.030, A vs colour fields 3.40 (113x).
    pool, pool_cams = np.concatenate([a_images, b_images]), np.concatenate([a_cams, b_cams])
    rng = np.random.default_rng(1)
    splits = []
    for _ in range(3):
        p = rng.permutation(96)
        splits.append(fid_between(_stats(pool[p[:48]], pool_cams[p[:48]], ext),
                                  _stats(pool[p[48:]], pool_cams[p[48:]], ext)))
    assert 0 < fid_same < fid_far / 20
    assert all(0 < f < fid_far / 20 for f in splits), (splits, fid_far)


def test_dataset_hash_follows_content_not_location(datasets, tmp_path):
    h = dataset_hash(datasets["a"])
    copy = shutil.copytree(datasets["a"], tmp_path / "copy")
    assert dataset_hash(copy) == h  # copies (new mtimes) share it
    assert dataset_hash(datasets["b"]) != h
    shards = sorted((copy / "shards").glob("*.parquet"))
    shards[-1].unlink()
    assert dataset_hash(copy) != h


def test_evaluate_fid_protocol_per_view_cache_and_determinism(datasets, tmp_path):
    G = micro_generator()
    G.train()
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    ext = SmallFeatures()
    first = evaluate_fid(G, datasets["a"], num_fakes=40, seed=3, extractor=ext, cache_dir=tmp_path)
    # Training-time use: the global RNG stream and G's mode are left as they were.
    assert torch.rand(1).item() == expected_next.item() and G.training
    assert not first.reference_cached
    cache = list((tmp_path / "fid_stats").glob("*.npz"))
    assert [p.name for p in cache] == [f"{dataset_hash(datasets['a'])}-test-random-conv-r32.npz"]
    p = first.protocol
    assert (p["num_fakes"], p["num_real"], p["seed"], p["truncation_psi"]) == (40, 48, 3, 1.0)
    assert p["feature_extractor"] == "test-random-conv" and p["resolution"] == 32
    assert p["dataset_hash"] == dataset_hash(datasets["a"]) and "dataset labels" in p["camera_distribution"]
    assert sum(p["num_fakes_per_view"].values()) == 40 and set(first.per_view) == {"front", "side", "back"}
    assert np.isfinite(first.overall) and first.overall > 0
    for g, v in first.per_view.items():
        assert np.isnan(v) == (min(p["num_fakes_per_view"][g], p["num_real_per_view"][g]) < 2)
    again = evaluate_fid(G, datasets["a"], num_fakes=40, seed=3, extractor=ext, cache_dir=tmp_path)
    assert again.reference_cached and again.overall == first.overall and again.per_view == first.per_view
    other_seed = evaluate_fid(G, datasets["a"], num_fakes=40, seed=4, extractor=ext, cache_dir=tmp_path,
                              per_view=False)
    assert other_seed.overall != first.overall and other_seed.per_view == {}
    saved = json.loads(first.save_json(tmp_path / "fid.json").read_text())
    assert saved["overall"] == pytest.approx(first.overall) and saved["protocol"]["seed"] == 3
    assert first.metrics()["fid"] == first.overall and "fid_back" in first.metrics()


def test_evaluate_fid_rejects_bad_input(datasets, tmp_path):
    G = micro_generator()
    with pytest.raises(ValueError, match="num_fakes"):
        evaluate_fid(G, datasets["a"], num_fakes=1, extractor=SmallFeatures(), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="truncation_psi"):
        evaluate_fid(G, datasets["a"], num_fakes=8, truncation_psi=1.5, extractor=SmallFeatures())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no Parquet shards"):
        dataset_hash(tmp_path / "empty")


def test_real_inception_fid_through_the_cli(head_dataset, tmp_path, capsys):
    """The one test with the real 2048-d Inception (fid-helper's weights), end to end through `avatar3d fid`."""
    from avatar3d.cli import main
    from avatar3d.evaluation.features import get_extractor

    ext = get_extractor("inception-fid-helper")
    imgs = _load(head_dataset)[0][:3]
    feats = ext(imgs)
    assert feats.shape == (3, 2048) and (feats >= 0).all()  # pool features follow a ReLU
    assert np.abs(ext(imgs[1:]) - feats[1:]).max() < 1e-3 * np.abs(feats).max()  # per image, batch-independent

    snap = write_micro_snapshot(tmp_path / "g.safetensors")
    out = tmp_path / "fid.json"
    rc = main(["fid", "--model", str(snap), "--data", str(head_dataset), "--num-fakes", "12",
               "--no-per-view", "--extractor", "inception-fid-helper", "--cache-dir", str(tmp_path),
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["protocol"]["feature_extractor"] == "inception-fid-helper"
    assert result["protocol"]["model"] == str(snap) and result["protocol"]["num_real"] == 16
    # An untrained generator is far from the data: a large, finite FID.
    assert 10 < result["overall"] < 1000
    assert "FID" in capsys.readouterr().out


N_INCEPTION = 8  # images per set through the real Inception: ~0.3 s each on one core


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    """The real Inception (fid-helper's weights), its network wrapped to record what it ran on, and the
    reference statistics of two head datasets (seeds 0 and 1) through evaluate_fid's path for reals."""
    from types import SimpleNamespace

    from avatar3d.evaluation.features import get_extractor

    root = tmp_path_factory.mktemp("inception")
    ext = get_extractor("inception-fid-helper")
    ext._net = net = RecordedNetwork(ext._net)
    data = {k: write_head_dataset(root / k, n=N_INCEPTION, size=32, seed=seed, rows_per_file=4)
            for k, seed in (("a", 0), ("b", 1))}
    stats = {k: reference_stats(folder, ext, 32, root / "cache")[0] for k, folder in data.items()}
    assert net.misses == 2 * N_INCEPTION and net.hits == 0
    return SimpleNamespace(ext=ext, net=net, data=data, stats=stats)


def test_fid_equals_clean_fids_compute_fid_on_the_same_images(inception, tmp_path, monkeypatch):
    """clean-fid's compute_fid on two folders of the datasets' PNGs (byte copies), with our network as its
    custom_feat_extractor (it calls it on (B, 3, 299, 299) float batches in [0, 255], resized by its "clean"
    PIL-bicubic resizer, and takes the rows of what it returns as features), against our FID of the datasets.

    One substitution: clean-fid's last step, scipy's sqrtm of a 2048x2048 product, costs 15-60 s on one
    core, so its frechet_distance is replaced by a spy that records clean-fid's (mu, sigma) and answers with our
    "eigh" Frechet distance; test_frechet_eigh_equals_clean_fid pins that function to clean-fid's own (also on
    rank-deficient covariances as here), and a full run with sqrtm measured the same agreement (2e-7).

    What must agree: every row clean-fid fed the network is bit for bit a row our pipeline fed it (asserted),
    clean-fid's mean and covariance equal ours, and so does the FID. Tolerance rel=1e-6: clean-fid averages
    float32 features in float32 (ours: float64), ~1e-7 relative on mu; measured |ours - clean-fid| / FID
    3e-9. Breakages measured on these images: a quantised resize moves FID by 2.1%, a bilinear one by 6.5%,
    RGB read as BGR by 0.09%: all far outside 1e-6, and the bit-for-bit row check fails on any of them first.
    """
    from cleanfid import fid as cleanfid

    from avatar3d.datagen.shards import export_eg3d

    folders = [str(export_eg3d(inception.data[k], tmp_path / k).out_dir) for k in ("a", "b")]
    seen = []

    def frechet_spy(mu1, sigma1, mu2, sigma2, eps=1e-6):
        seen.append((mu1, sigma1, mu2, sigma2))
        return frechet_distance(mu1, sigma1, mu2, sigma2, method="eigh")

    monkeypatch.setattr(cleanfid, "frechet_distance", frechet_spy)
    net = inception.net
    hits, misses = net.hits, net.misses
    theirs = float(cleanfid.compute_fid(folders[0], folders[1], mode="clean", custom_feat_extractor=net,
                                        num_workers=0, batch_size=8, device=torch.device("cpu"), verbose=False))
    assert (net.hits - hits, net.misses - misses) == (2 * N_INCEPTION, 0)  # the same network inputs, bit for bit
    (mu_a, sigma_a, mu_b, sigma_b), = seen
    a, b = inception.stats["a"], inception.stats["b"]
    for ours_, theirs_ in ((a.mu["all"], mu_a), (b.mu["all"], mu_b)):
        np.testing.assert_allclose(theirs_, ours_, rtol=1e-5, atol=1e-6 * np.abs(ours_).max())
    for ours_, theirs_ in ((a.sigma["all"], sigma_a), (b.sigma["all"], sigma_b)):
        np.testing.assert_allclose(theirs_, ours_, rtol=1e-5, atol=1e-7 * np.abs(ours_).max())
    ours = fid_between(a, b, "all", "eigh")
    print(f"\nclean-fid compute_fid {theirs:.6f}, ours {ours:.6f} (rel {abs(ours - theirs) / theirs:.1e})")
    assert theirs > 1.0 and ours == pytest.approx(theirs, rel=1e-6)


def test_real_inception_orders_near_same_distribution_and_far(inception):
    """With the real network: the same images mildly blurred < other samples of the same distribution <
    another image family. Measured (N=8): blur 0.3 px ~10, other head renders ~120, colour fields ~300+."""
    from PIL import Image, ImageFilter

    ext = inception.ext
    images, cams = _load(inception.data["a"])
    groups = camera_groups(cams)
    near = np.stack([np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(0.3))) for x in images])
    far = colour_fields(N_INCEPTION, 32, seed=2)
    real = inception.stats["a"]
    fid_near = fid_between(FeatureStats.from_features(ext(near), groups), real, "all", "eigh")
    fid_same = fid_between(inception.stats["b"], real, "all", "eigh")
    fid_far = fid_between(FeatureStats.from_features(ext(far), groups), real, "all", "eigh")
    print(f"\nInception FID vs head renders (N={N_INCEPTION}): blurred {fid_near:.2f}, other head renders "
          f"{fid_same:.2f}, colour fields {fid_far:.2f}")
    assert 0 < fid_near < fid_same / 3
    assert fid_same < fid_far / 1.5


def test_inception_weights_come_from_the_package_or_the_project_cache_never_tmp(tmp_path, monkeypatch):
    import inspect

    import avatar3d.evaluation.features as features

    monkeypatch.setenv("AVATAR3D_CACHE_DIR", str(tmp_path))
    assert features.InceptionFeatures("auto").source == "fid-helper"  # nothing in the cache: the wheel's copy
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "inception-2015-12-05.pt")):
        features.InceptionFeatures("clean-fid")
    # clean-fid itself reads /tmp/inception-2015-12-05.pt (TorchScript, anyone can write there): never here.
    assert "/tmp" not in inspect.getsource(features).replace("``/tmp``", "")


def test_a_row_whose_image_is_not_a_png_is_named_not_a_traceback(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from avatar3d.evaluation.fid import iter_dataset

    data = tmp_path / "ds"
    shutil.copytree("tests/fixtures/formats/dataset_v2", data)
    last = sorted((data / "shards").glob("*.parquet"))[-1]
    table = pq.read_table(last)
    images = table.column("image_png").to_pylist()
    images[-1] = b"this is text posing as a PNG"
    bad_id = table.column("id").to_pylist()[-1]
    pq.write_table(table.set_column(table.schema.get_field_index("image_png"), "image_png",
                                    pa.array(images, type=table.schema.field("image_png").type)), last)
    with pytest.raises(ValueError, match=rf"^--data: row id {bad_id}: not a readable image \(.*\); regenerate"):
        for _ in iter_dataset(data, 16, batch_size=3):
            pass
