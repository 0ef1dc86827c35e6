"""Pairs: what each row holds, and that row i depends only on (seed, i)."""
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from avatar3d.config import ConfigError
from avatar3d.prior.config import BuildPairsConfig
from avatar3d.prior.encoder import tiny_encoder
from avatar3d.prior.pairs import CARD, check_pairs, read_pairs, row_seed, run_build_pairs
from avatar3d.prior.views import map_front, seeded_z
from avatar3d.gan.snapshot import load_snapshot
from tests.prior.conftest import NUM_TRAIN_PAIRS, build_pairs_local

torch.set_num_threads(1)


def test_schema_card_and_row_contents(train_pairs, micro_snapshot):
    info = check_pairs(train_pairs)
    assert info.num_rows == NUM_TRAIN_PAIRS and info.w_dim == 32 and info.embed_dim == 32
    schema = pq.read_schema(info.files[0])
    assert schema.field("w").type == pa.list_(pa.float32())
    assert schema.field("embedding").type == pa.list_(pa.float32())
    card = json.loads((train_pairs / CARD).read_text())
    assert card["snapshot"] == str(micro_snapshot) and card["image_encoder"] == "tiny"

    pairs = read_pairs(train_pairs, with_images=True)
    assert (pairs.index == np.arange(NUM_TRAIN_PAIRS)).all()
    # w is row 0 of the front-camera mapping of the row's own z; EG3D broadcasts it to every layer.
    G = load_snapshot(micro_snapshot).generator
    mapped = map_front(G, seeded_z(G, pairs.seed[:4]))
    assert all(s == row_seed(0, i) for i, s in enumerate(pairs.seed[:4]))
    assert torch.equal(mapped.ws, mapped.w[:, None].expand_as(mapped.ws))
    assert np.allclose(pairs.w[:4], mapped.w.numpy(), atol=1e-6)
    # The embedding is the tiny CLIP's embedding of the stored front render.
    front = [np.asarray(Image.open(io.BytesIO(b))) for b in pairs.image_png[:4]]
    assert front[0].shape == (32, 32, 3)
    assert np.allclose(pairs.embedding[:4], tiny_encoder().embed(front).numpy(), atol=1e-5)
    assert np.linalg.norm(pairs.w[0] - pairs.w[1]) > 1e-3


def test_rows_depend_only_on_seed_and_index(tmp_path, micro_snapshot, train_pairs):
    """Another batch size, fewer rows: the same first rows (up to the float rounding of batched matmuls,
    which BLAS sums in a batch-dependent order); another seed: other rows."""
    again = read_pairs(build_pairs_local(tmp_path / "a", micro_snapshot, 5, seed=0, batch_size=2), with_images=True)
    full = read_pairs(train_pairs, with_images=True)
    assert np.allclose(again.w, full.w[:5], atol=1e-5) and np.allclose(again.embedding, full.embedding[:5], atol=1e-4)
    for a, b in zip(again.image_png, full.image_png[:5]):
        diff = np.abs(np.asarray(Image.open(io.BytesIO(a)), np.int16) - np.asarray(Image.open(io.BytesIO(b)), np.int16))
        assert diff.max() <= 1
    other = read_pairs(build_pairs_local(tmp_path / "b", micro_snapshot, 5, seed=7))
    assert not np.allclose(other.w, full.w[:5])


def test_existing_folder_and_bad_snapshot(tmp_path, train_pairs, micro_snapshot):
    with pytest.raises(ConfigError, match="overwrite=true"):
        run_build_pairs(BuildPairsConfig(output_dir=str(train_pairs), snapshot=str(micro_snapshot), num_pairs=2),
                        use_ray=False)
    with pytest.raises(FileNotFoundError, match="snapshot not found"):
        run_build_pairs(BuildPairsConfig(output_dir=str(tmp_path), snapshot=str(tmp_path / "x.safetensors")),
                        use_ray=False)
    with pytest.raises(FileNotFoundError, match="build-prior-pairs"):
        check_pairs(tmp_path / "empty")
