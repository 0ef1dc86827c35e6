"""``export_eg3d`` writes what EG3D's dataset loader reads (README: "writes EG3D's dataset.json + image folder").

EG3D's documented dataset format: a folder or a zip whose ``dataset.json`` is
``{"labels": [[filename, [25 floats]], ...]}``, file names relative to the archive root; the 25 floats are the
OpenCV cam2world 4x4 (row-major) then the 3x3 intrinsics normalised by image size (row-major); the images are
RGB PNGs of one square size. ``read_eg3d`` below does what EG3D's ImageFolderDataset does with it: list every
image file under the root (sorted), look each one up in ``dict(labels)`` (an image without a label is a
KeyError there too), stack the labels as float32 (N, 25), open each image with PIL.

The dataset is the procedural painter's, written by the generation job's own pieces (what ``make demo`` exports).
"""
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avatar3d.datagen.dataset import decode_png, read_table
from avatar3d.datagen.shards import export_eg3d
from tests.training.fixtures import write_procedural_dataset

SIZE = 32
EG3D_RADIUS, EG3D_FOCAL = 2.7, 4.2647  # EG3D's FFHQ camera: the radius and the stored focal length


def read_eg3d(root):
    """-> (image names, float32 labels (N, 25), uint8 images (N, H, W, 3)), as EG3D's loader reads them."""
    root = Path(root)
    if root.suffix == ".zip":
        archive = zipfile.ZipFile(root)
        names = archive.namelist()
        opener = archive.open
    else:
        names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        opener = lambda name: open(root / name, "rb")  # noqa: E731
    Image.init()
    image_names = sorted(n for n in names if Path(n).suffix.lower() in Image.EXTENSION)
    with opener("dataset.json") as f:
        labels = dict(json.load(f)["labels"])
    labels = np.array([labels[n.replace("\\", "/")] for n in image_names]).astype(np.float32)
    images = []
    for name in image_names:
        with opener(name) as f:
            image = Image.open(f)
            assert image.format == "PNG" and image.mode == "RGB", (name, image.format, image.mode)
            images.append(np.array(image))
    shapes = {im.shape for im in images}
    assert len(shapes) == 1, f"images of several sizes: {shapes}"
    (h, w, c), = shapes
    assert h == w and c == 3
    return image_names, labels, np.stack(images)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_procedural_dataset(tmp_path_factory.mktemp("procedural"), n=12, size=SIZE, rows_per_file=5)


def test_export_reads_back_through_eg3ds_loader_as_folder_and_zip(dataset, tmp_path):
    export = export_eg3d(dataset, tmp_path / "eg3d")
    rows = read_table(dataset, columns=["id", "camera", "image_png", "yaw", "pitch"]).to_pylist()
    assert export.num_images == len(rows) == 12 and export.dataset_json == tmp_path / "eg3d" / "dataset.json"
    names, labels, images = read_eg3d(export.out_dir)
    by_id = {f"img{r['id']}.png": r for r in rows}
    assert names == sorted(by_id)  # one image per row, named relative to the root, nothing else
    assert labels.shape == (12, 25) and labels.dtype == np.float32 and images.shape == (12, SIZE, SIZE, 3)
    for name, label, image in zip(names, labels, images):
        row = by_id[name]
        assert np.array_equal(label, np.float32(row["camera"]))  # this image's own camera
        assert np.array_equal(image, decode_png(row["image_png"]))  # the pixels as generated
    # The same folder zipped the way EG3D's dataset_tool writes archives (names relative to the root).
    archive = tmp_path / "eg3d.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(export.out_dir.iterdir()):
            z.write(path, path.name)
    zipped = read_eg3d(archive)
    assert zipped[0] == names and np.array_equal(zipped[1], labels) and np.array_equal(zipped[2], images)


def test_labels_are_row_major_opencv_cam2world_then_normalised_intrinsics(dataset, tmp_path):
    """Each label, taken apart as EG3D does: a rigid camera on EG3D's sphere at the row's yaw and elevation,
    looking at the head with image-down pointing down (OpenCV), then fx = fy = 4.2647, principal point 0.5."""
    export = export_eg3d(dataset, tmp_path / "eg3d")
    rows = {f"img{r['id']}.png": r for r in read_table(dataset, columns=["id", "yaw", "pitch"]).to_pylist()}
    names, labels, _ = read_eg3d(export.out_dir)
    for name, label in zip(names, labels.astype(np.float64)):
        c2w, k = label[:16].reshape(4, 4), label[16:].reshape(3, 3)
        assert np.allclose(c2w[3], [0, 0, 0, 1], atol=1e-6), name  # row-major: the last row is (0, 0, 0, 1)
        rot, position = c2w[:3, :3], c2w[:3, 3]
        assert np.allclose(rot.T @ rot, np.eye(3), atol=1e-5) and np.linalg.det(rot) == pytest.approx(1, abs=1e-5)
        assert np.linalg.norm(position) == pytest.approx(EG3D_RADIUS, rel=1e-5)
        assert np.allclose(rot[:, 2], -position / np.linalg.norm(position), atol=1e-5)  # z looks at the head
        assert rot[1, 1] < 0  # camera y (image down) points down the world's y (up) axis
        yaw = math.degrees(math.atan2(position[0], position[2]))  # yaw 0 at +z, +90 at +x
        pitch = math.degrees(math.asin(position[1] / np.linalg.norm(position)))  # elevation, + above
        assert (yaw - rows[name]["yaw"] + 180) % 360 - 180 == pytest.approx(0, abs=1e-3), name
        assert pitch == pytest.approx(rows[name]["pitch"], abs=1e-3), name
        assert np.allclose(k, [[EG3D_FOCAL, 0, 0.5], [0, EG3D_FOCAL, 0.5], [0, 0, 1]], atol=1e-6), name


def test_exporting_again_into_the_same_folder_leaves_no_unlabelled_image(dataset, tmp_path):
    """A second export into a used folder is refused (naming it) and leaves the first intact; with overwrite
    the folder is replaced whole and reads cleanly with exactly its own rows (an earlier export's extra images
    used to stay beside the new dataset.json, unlabelled: a KeyError in EG3D's loader)."""
    smaller = write_procedural_dataset(tmp_path / "smaller", n=4, size=SIZE, rows_per_file=4)
    first = export_eg3d(dataset, tmp_path / "eg3d").num_images
    with pytest.raises(FileExistsError, match="is not empty") as err:
        export_eg3d(smaller, tmp_path / "eg3d")
    assert str(tmp_path / "eg3d") in str(err.value)
    assert len(read_eg3d(tmp_path / "eg3d")[0]) == first > 4
    export_eg3d(smaller, tmp_path / "eg3d", overwrite=True)
    names, _, _ = read_eg3d(tmp_path / "eg3d")
    assert len(names) == 4 and len(list((tmp_path / "eg3d").iterdir())) == 5  # 4 images + dataset.json
