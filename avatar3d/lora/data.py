"""The character's training images: one folder of ~10 pictures of one character.

Folder rules (checked before any model is loaded, each failure one line
naming the ``images`` option):

* the folder must exist and hold at least ``min_images`` images;
* every visible file must be an image (``.png .jpg .jpeg .webp .bmp``) that
  PIL can open, at least 16 pixels on its short side (the project's one rule,
  :func:`avatar3d.config.check_image_size`). A stray non-image file is *refused*, naming the file, rather
  than skipped: a LoRA learns whatever it is shown, so a folder with
  unexpected content is more likely the wrong folder than a folder to guess
  about. Hidden files (``.DS_Store``, ``.ipynb_checkpoints``) and sub-folders
  are ignored, so caption or backup folders can live beside the images.

Images are turned upright (EXIF), transparent areas are put on white (the
usual background of character sheets; RGBA -> RGB alone would paint them
black or with the hidden colour), the shorter side is resized to the
training resolution and the centre square is cropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from avatar3d.config import check_image_size

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class ImageSet:
    """Training images as float32 ``(N, 3, R, R)`` in [-1, 1], with their source files."""

    pixels: np.ndarray
    paths: list[Path]

    def __len__(self) -> int:
        return len(self.paths)


def find_images(folder: str | Path, min_images: int = 1, field: str = "images") -> list[Path]:
    """The image files of ``folder`` (sorted by name); raises ValueError (one line) on a bad folder."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise ValueError(f"{field}={str(folder)!r} {what}: pass a folder of {min_images}+ images of the character")
    files = sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.is_file())
    if not files:
        raise ValueError(f"{field}={str(folder)!r} is empty: put {min_images}+ images of the character "
                         f"({' '.join(IMAGE_SUFFIXES)}) in it")
    for path in files:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{field}={str(folder)!r} holds a non-image file {path.name!r}: remove it or move it "
                             f"to a sub-folder (accepted: {' '.join(IMAGE_SUFFIXES)})")
    if len(files) < min_images:
        raise ValueError(f"{field}={str(folder)!r} holds {len(files)} image(s), fewer than min_images={min_images}: "
                         f"add images of the character (about 10 work well) or pass min_images={len(files)}")
    return files


def load_image(path: Path, resolution: int, field: str = "images") -> np.ndarray:
    """One image -> float32 ``(3, R, R)`` in [-1, 1]: upright, alpha on white, short side resized, centre crop."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{field}: {path.name!r} cannot be read as an image ({type(err).__name__}): "
                         "replace or remove it") from None
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    im = im.convert("RGB")
    w, h = im.size
    check_image_size(w, h, f"{field}: {path.name!r}")
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    im = im.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    im = im.crop((left, top, left + resolution, top + resolution))
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return arr.transpose(2, 0, 1).copy()


def load_image_set(folder: str | Path, resolution: int, min_images: int = 1, field: str = "images") -> ImageSet:
    """Check the folder, then load every image at ``resolution``."""
    paths = find_images(folder, min_images, field)
    return ImageSet(np.stack([load_image(p, resolution, field) for p in paths]), paths)
