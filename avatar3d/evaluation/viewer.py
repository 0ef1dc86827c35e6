"""An interactive 3D viewer for an exported mesh that works offline, from ``file://``.

    viewer_element(glb_bytes, ...)      the <model-viewer> tag, the GLB inside it as a data: URL
    write_viewer(page, glb_bytes, ...)  a standalone HTML page + the viewer's script copied beside it
    install_script(folder)              only the script (the report puts several viewers on its own page)
    painter_note(base_model)            one sentence: what painted the images a generator learned from

The script is Google's ``<model-viewer>`` (three.js bundled in), its UMD build:
a classic script, because Chromium refuses ES-module scripts on ``file://``
pages (origin ``null``). It comes from npm, pinned by ``viewer/package-lock.json``
and installed by the project's set-up (``make install`` runs ``npm ci`` in
``viewer/``; the node image of ``cluster/Dockerfile`` carries it and sets
``$AVATAR3D_VIEWER_DIR``). Nothing is fetched from the network when a page
opens: the mesh is embedded in the page (a ``data:`` URL; a ``file://`` page
cannot ``fetch()`` a sibling file in Chromium) and the script sits beside it.
Only model-viewer's optional decoders (Draco, KTX2, meshopt) live on a CDN;
the GLBs written here use none of them.

Standard library plus :mod:`avatar3d.atomic` only: the CLI checks that the
viewer is installed before it loads a model.
"""
from __future__ import annotations

import base64
import filecmp
import html
import os
import shutil
from pathlib import Path

from avatar3d.atomic import atomic_path, atomic_write

VIEWER_SCRIPT = "model-viewer-umd.min.js"  # the name it has beside a page
PACKAGE_FILE = Path("node_modules") / "@google" / "model-viewer" / "dist" / VIEWER_SCRIPT
VIEWER_ENV = "AVATAR3D_VIEWER_DIR"  # a folder with node_modules/ from `npm ci` (default: the checkout's viewer/)
CHECKOUT_VIEWER = Path(__file__).resolve().parents[2] / "viewer"
INSTALL_HINT = ("run `make install` with npm on the PATH (or `npm ci` in the checkout's viewer/ folder), "
                f"or point ${VIEWER_ENV} at a folder where `npm ci` ran")
GLB_MIME = "model/gltf-binary"


class ViewerNotInstalled(FileNotFoundError):
    """The viewer's script is not on this machine (npm was missing at install time)."""


def viewer_script() -> Path | None:
    """The installed script: under ``$AVATAR3D_VIEWER_DIR`` when set, else the checkout's ``viewer/``."""
    folder = os.environ.get(VIEWER_ENV)
    path = (Path(folder) if folder else CHECKOUT_VIEWER) / PACKAGE_FILE
    return path if path.is_file() else None


def require_script() -> Path:
    path = viewer_script()
    if path is None:
        where = Path(os.environ.get(VIEWER_ENV) or CHECKOUT_VIEWER) / PACKAGE_FILE
        raise ViewerNotInstalled(f"the 3D viewer is not installed ({where} is missing); {INSTALL_HINT}")
    return path


def install_script(folder: str | Path) -> Path:
    """Copy the viewer's script into ``folder`` (left alone when the same file is already there)."""
    src = require_script()
    dst = Path(folder) / VIEWER_SCRIPT
    if not (dst.is_file() and filecmp.cmp(src, dst, shallow=False)):
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    return dst


def glb_data_url(glb: bytes) -> str:
    if glb[:4] != b"glTF":
        raise ValueError("mesh: the bytes are not a GLB (binary glTF); pass the bytes of a .glb file "
                         "(avatar3d.evaluation.mesh.mesh_bytes(mesh, 'glb'))")
    return f"data:{GLB_MIME};base64,{base64.b64encode(glb).decode('ascii')}"


def viewer_element(glb: bytes, alt: str, poster: str | None = None, size: str = "420px") -> str:
    """The ``<model-viewer>`` tag showing ``glb`` (drag to turn, wheel to zoom); needs :data:`VIEWER_SCRIPT`
    loaded on the page. ``poster``: an image (a preview PNG beside the page) shown until the mesh loads."""
    poster_attr = f' poster="{html.escape(poster)}"' if poster else ""
    return (f'<model-viewer class="avatar3d-viewer" src="{glb_data_url(glb)}" alt="{html.escape(alt)}" '
            f'camera-controls camera-orbit="0deg 75deg auto" shadow-intensity="0" '
            f'interaction-prompt="none"{poster_attr} '
            f'style="width:{size};height:{size};background:#eef0f3;border:1px solid #ccc"></model-viewer>')


# Marks each viewer loaded / failed on its own element (data-status), for people (the line under it) and tests.
STATUS_SCRIPT = """<script>
for (const mv of document.querySelectorAll("model-viewer.avatar3d-viewer")) {
  const line = mv.nextElementSibling;
  const say = (status, text) => { mv.dataset.status = status; if (line) line.textContent = text; };
  mv.addEventListener("load", () => say("loaded", "drag to turn, scroll to zoom"));
  mv.addEventListener("error", (e) => say("error", "the viewer could not show the mesh: " +
      ((e.detail && e.detail.type) || "unknown error")));
}
if (!customElements.get("model-viewer")) {
  for (const mv of document.querySelectorAll("model-viewer.avatar3d-viewer")) {
    mv.dataset.status = "no-script";
    if (mv.nextElementSibling) mv.nextElementSibling.textContent = "the viewer's script did not load";
  }
}
</script>"""


def script_tag() -> str:
    return f'<script src="{VIEWER_SCRIPT}"></script>'


def viewer_block(glb: bytes, alt: str, poster: str | None = None, size: str = "420px") -> str:
    """The element and its status line (what a page embeds; the page adds :func:`script_tag` and
    :data:`STATUS_SCRIPT` once)."""
    return (viewer_element(glb, alt, poster, size)
            + '<div class="note avatar3d-viewer-status">loading the 3D viewer...</div>')


def write_viewer(page: str | Path, glb: bytes, title: str, label: str, poster: str | None = None) -> list[Path]:
    """A standalone page showing ``glb``, with the viewer's script copied beside it -> [page, script].

    ``label``: what the page must say about the data (what painted the images the generator learned from,
    the mesh's provenance); shown above the viewer. The page references no URL but the script beside it."""
    page = Path(page)
    script = install_script(page.parent)
    text = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto;color:#222}}
.note{{color:#666;font-size:13px}} .label{{background:#fff6d5;padding:8px;border:1px solid #e0c060}}</style>
{script_tag()}</head><body>
<h1>{html.escape(title)}</h1>
<p class="label">{html.escape(label)}</p>
{viewer_block(glb, title, poster, "600px")}
{STATUS_SCRIPT}
</body></html>"""
    return [atomic_write(page, text), script]


def painter_note(base_model: str) -> str:
    """What painted the images, from a dataset card's ``model_ids.base_model`` ("" when unknown): the same
    three cases the report's headline names."""
    from avatar3d.datagen.config import TINY_MODEL_ID
    from avatar3d.datagen.procedural import PAINTER_ID

    if base_model == PAINTER_ID:
        return (f"The images the generator learned from were painted by the procedural painter ({PAINTER_ID}): "
                "parametric avatars rendered on the CPU, a synthetic test bed, not Stable Diffusion.")
    if base_model == TINY_MODEL_ID:
        return ("The images the generator learned from were painted by the tiny random-weight Stable Diffusion + "
                "ControlNet pipeline: noise by construction, so this mesh checks the plumbing only.")
    if base_model:
        return f"The images the generator learned from were painted by Stable Diffusion + ControlNet ({base_model})."
    return ("What painted the images the generator learned from is not recorded beside this model "
            "(a training run keeps it in its dataset's dataset_card.json).")


def snapshot_painter(model: str) -> str:
    """The dataset card's painter of a snapshot written by ``train-gan`` (its run folder keeps ``config.yaml``
    with ``data.path``); "" for registry URIs, moved snapshots or datasets without a card."""
    import json

    import yaml

    from avatar3d.datagen.shards import CARD_FILE

    path = Path(model)
    try:
        cfg = yaml.safe_load((path.parent / "config.yaml").read_text()) or {}
        data = (cfg.get("data") or {}).get("path") or ""
        card = json.loads((Path(data) / CARD_FILE).read_text()) if data and "://" not in data else {}
    except (OSError, ValueError, yaml.YAMLError, AttributeError):
        return ""
    return str((card.get("model_ids") or {}).get("base_model", ""))
