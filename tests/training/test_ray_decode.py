"""The GAN's Ray dataset: PNG decode + resize run in Ray Data's tasks (upstream of the workers' shards),
rows in file order, pixels uint8 through the object store."""
import functools

import numpy as np
import pytest
import ray

from avatar3d.datagen.dataset import TRAIN_COLUMNS, open_dataset, read_table
from avatar3d.training.data import decode_images
from avatar3d.training.ray_fit import RowTransform, ingest_options, training_dataset


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


def test_rows_arrive_decoded_in_file_order(head_dataset):
    dataset = open_dataset(head_dataset, columns=TRAIN_COLUMNS, field="data.path")
    # batch_size 3 across files of 8 rows: the tasks' batches straddle files and blocks.
    decode = RowTransform(functools.partial(decode_images, resolution=16), batch_size=3)
    ds = training_dataset(dataset.files, ["image_png", "camera"], dataset.filesystem, decode)
    # Its options live in its own context (the process's is left alone: tests/conftest.py checks that), and the
    # ingest options Train replaces them with keep the order too.
    assert ds.context.execution_options.preserve_order and not ds.context.enable_progress_bars
    assert ingest_options().preserve_order
    batches = list(ds.iter_batches(batch_size=4, batch_format="numpy", drop_last=True))
    assert all(set(b) == {"image", "camera"} for b in batches)  # no PNG bytes reach the workers
    images = np.concatenate([b["image"] for b in batches])
    cameras = np.concatenate([b["camera"] for b in batches])
    assert images.dtype == np.uint8 and images.shape == (dataset.num_rows, 16, 16, 3)
    rows = read_table(head_dataset).to_pydict()  # the dataset's row order, read without Ray
    expected = decode_images({k: rows[k] for k in ("image_png", "camera")}, 16)
    assert np.array_equal(images, expected["image"])
    assert np.array_equal(cameras, expected["camera"])


def test_a_materialized_dataset_gives_the_same_rows_in_the_same_order(head_dataset):
    """What ``fit_with_ray(materialize=True)`` hands Train (the prior's pairs): read once into the object store,
    iterated per epoch from there, row for row what the lazy dataset gives, and with its options kept."""
    dataset = open_dataset(head_dataset, columns=TRAIN_COLUMNS, field="data.path")
    lazy = training_dataset(dataset.files, ["camera"], dataset.filesystem)
    stored = training_dataset(dataset.files, ["camera"], dataset.filesystem).materialize()
    assert stored.context.execution_options.preserve_order and not stored.context.enable_progress_bars
    rows = [np.stack([c for b in ds.iter_batches(batch_size=5, batch_format="numpy") for c in b["camera"]])
            for ds in (lazy, stored, stored)]  # the stored one twice: two epochs
    assert len(rows[0]) == dataset.num_rows
    assert all(np.array_equal(rows[0], r) for r in rows[1:])
