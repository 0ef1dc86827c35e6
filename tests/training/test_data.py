"""Dataset checks and decoding for training."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avatar3d.scene.cameras import flip_label, label_to_yaw_pitch
from avatar3d.training.data import check_dataset, decode_batch, dataset_files


def _rows(path):
    return pq.read_table(dataset_files(path)).to_pydict()


def test_check_dataset_counts_rows_and_sizes(head_dataset):
    info = check_dataset(head_dataset)
    assert info.num_rows == 16 and len(info.files) == 2 and info.image_size == (32, 32)


@pytest.mark.parametrize("case, pattern", [
    ("missing", "does not exist"),
    ("empty_folder", "no Parquet shards"),
    ("no_rows", "has no rows"),
    ("wrong_schema", "lacks column"),
    ("bad_label", "camera labels have 24 values"),
    ("corrupt", "not readable Parquet"),
    ("unset", "no dataset given"),
])
def test_bad_datasets_fail_with_one_line(tmp_path, head_dataset, case, pattern):
    target = tmp_path / "ds"
    (target / "shards").mkdir(parents=True)
    rows = _rows(head_dataset)
    if case == "missing":
        target = tmp_path / "nope"
    elif case == "no_rows":
        pq.write_table(pa.table({k: v[:0] for k, v in rows.items()}), target / "shards" / "part-a-00000.parquet")
    elif case == "wrong_schema":
        pq.write_table(pa.table({"id": ["a"], "camera": [[0.0] * 25]}), target / "shards" / "part-a-00000.parquet")
    elif case == "bad_label":
        rows["camera"] = [c[:24] for c in rows["camera"]]
        pq.write_table(pa.table(rows), target / "shards" / "part-a-00000.parquet")
    elif case == "corrupt":
        (target / "shards" / "part-a-00000.parquet").write_bytes(b"PAR1 not really")
    elif case == "unset":
        target = ""
    with pytest.raises((ValueError, FileNotFoundError), match=pattern) as info:
        check_dataset(target)
    assert "\n" not in str(info.value)


def test_decode_scales_to_minus_one_one_and_resizes(head_dataset):
    rows = _rows(head_dataset)
    batch = decode_batch({k: rows[k][:4] for k in ("image_png", "camera")}, 16, False, np.random.default_rng(0))
    assert batch.images.shape == (4, 3, 16, 16) and batch.cameras.shape == (4, 25)
    assert batch.images.min() >= -1 and batch.images.max() <= 1 and batch.images.std() > 0.05
    np.testing.assert_allclose(batch.cameras.numpy(), np.asarray(rows["camera"][:4]), atol=1e-6)


def test_mirror_flips_image_and_label_together(head_dataset):
    rows = _rows(head_dataset)
    sub = {k: rows[k][:16] for k in ("image_png", "camera")}
    plain = decode_batch(sub, 32, False, np.random.default_rng(0))
    mirrored = decode_batch(sub, 32, True, np.random.default_rng(0))
    flipped = ~np.isclose(mirrored.cameras.numpy(), plain.cameras.numpy()).all(1)
    assert 0 < flipped.sum() < 16  # about half
    for i in range(16):
        if flipped[i]:
            assert np.array_equal(mirrored.images[i].numpy(), plain.images[i].numpy()[:, :, ::-1])
            np.testing.assert_allclose(mirrored.cameras[i].numpy(), flip_label(np.asarray(rows["camera"][i])), atol=1e-6)
            y0, _ = label_to_yaw_pitch(np.asarray(rows["camera"][i]))
            y1, _ = label_to_yaw_pitch(mirrored.cameras[i].numpy().astype(np.float64))
            assert abs(((y0 + y1 + 180) % 360) - 180) < 1e-3
        else:
            assert np.array_equal(mirrored.images[i].numpy(), plain.images[i].numpy())
