"""FID: the maths (A vs A ~ 0, near below far), the protocol, the reference-statistics cache, one real Inception run."""
import json
import shutil

import numpy as np
import pytest
import torch

from avatar3d.evaluation.fid import (FeatureStats, camera_groups, dataset_hash, evaluate_fid, fid_between,
                                     frechet_distance, iter_dataset, reference_stats)
from tests.evaluation.helpers import SmallFeatures, micro_generator, write_micro_snapshot
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


def test_fid_of_a_set_with_itself_is_zero_and_near_set_is_below_far_set(datasets, tmp_path):
    ext = SmallFeatures()
    real, _, cached = reference_stats(datasets["a"], ext, 32, tmp_path)
    assert not cached and real.count == {"all": 48, **{g: real.count[g] for g in ("front", "side", "back")}}
    assert sum(real.count[g] for g in ("front", "side", "back")) == 48
    same = _stats(*_load(datasets["a"]), ext)
    near_images, near_cams = _load(datasets["b"])  # same distribution, other samples
    rng = np.random.default_rng(0)
    far_images = np.clip(near_images + rng.normal(0, 60, near_images.shape), 0, 255).astype(np.uint8)
    fid_same = fid_between(same, real)
    fid_near = fid_between(_stats(near_images, near_cams, ext), real)
    fid_far = fid_between(_stats(far_images, near_cams, ext), real)
    assert abs(fid_same) < 1e-6 * fid_near
    assert 0 < fid_near < fid_far / 3


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
