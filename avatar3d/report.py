"""An HTML report of a pipeline run that a person can open: ``<output_dir>/report/index.html``.

Shows what each stage produced, from its files on disk and the MLflow store:
guidance contact sheet, prompt samples, dataset samples per view group and
the dataset card's counts, GAN samples per view group from the final snapshot
with the last training metrics, and the registered models.
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import numpy as np

from avatar3d.safeio import atomic_write


def write_report(output_dir: str | Path, tracking_uri: str) -> Path:
    out = Path(output_dir)
    rep = out / "report"
    rep.mkdir(parents=True, exist_ok=True)
    sections = [_guidance(out, rep), _prompts(), _dataset(out, rep), _gan(out, rep), _evaluation(out, rep),
                _image_to_avatar(out, rep), _registry(tracking_uri)]
    body = "\n".join(s for s in sections if s)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>avatar3d report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
img{{image-rendering:pixelated;max-width:100%;min-height:128px;border:1px solid #ccc}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}} h2{{margin-top:2em}}
.note{{color:#666;font-size:13px}}</style></head><body>
<h1>avatar3d pipeline report</h1><p class="note">{html.escape(str(out.resolve()))}</p>
{body}</body></html>"""
    return atomic_write(rep / "index.html", page)


def _img(name: str, caption: str) -> str:
    return f'<figure><img src="{name}"><figcaption class="note">{html.escape(caption)}</figcaption></figure>'


def _table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(k, '')))}</td>" for k in keys) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _guidance(out: Path, rep: Path) -> str:
    sheet = out / "guidance" / "contact_sheet.png"
    if not sheet.is_file():
        return ""
    shutil.copyfile(sheet, rep / "guidance.png")
    return ("<h2>1. Guidance from the canonical head</h2>"
            + _img("guidance.png", "OpenPose / depth / normal / hybrid guidance for evenly spaced yaws"))


def _prompts() -> str:
    from avatar3d.prompts import sample_prompts

    rows = [{"style": s.style, "view": s.view, "yaw": f"{s.yaw:+.0f}", "prompt": s.prompt,
             "negative (view part)": s.negative_prompt.split("text, ")[-1]} for s in sample_prompts(6, 0)]
    return "<h2>2. View- and attribute-aware prompts (seed 0)</h2>" + _table(rows)


def _dataset(out: Path, rep: Path) -> str:
    import io

    from PIL import Image

    from avatar3d.datagen.dataset import dataset_files, read_table
    from avatar3d.datagen.shards import CARD_FILE
    from avatar3d.scene.pose_bins import VIEW_GROUPS
    from avatar3d.gan.samples import image_grid

    ds = out / "dataset"
    if not ds.is_dir() or not dataset_files(ds)[1]:
        return ""
    table = read_table(ds, columns=["image_png", "view", "style"]).to_pydict()
    parts = ["<h2>3. Generated multi-view dataset</h2>"]
    card_path = ds / CARD_FILE
    if card_path.is_file():
        card = json.loads(card_path.read_text())
        counts = card.get("counts", {})
        models = json.dumps(card.get("model_ids", {}))
        parts.append(f"<p>{card.get('num_rows', len(table['view']))} images, {card.get('image_sizes')}; "
                     f"models: {html.escape(models)}</p>")
        if "tiny" in models:
            parts.append('<p class="note">The tiny preset runs the real pipeline classes with random weights '
                         "(nothing can be downloaded here), so its images are noise by construction and the GAN "
                         "below learns that noise: this report checks the plumbing. The sd15 config paints "
                         "real avatars with the same code.</p>")
        parts.append(_table([{"count of": k, "values": json.dumps(v)} for k, v in counts.items()
                             if k in ("style", "view", "coarse_bin")]))
    for group in VIEW_GROUPS:
        idx = [i for i, v in enumerate(table["view"]) if v == group][:8]
        if not idx:
            continue
        tiles = np.stack([np.asarray(Image.open(io.BytesIO(table["image_png"][i])).convert("RGB")) for i in idx])
        image_grid(tiles, 1, len(idx)).save(rep / f"dataset_{group}.png")
        parts.append(_img(f"dataset_{group}.png", f"{group} views"))
    return "\n".join(parts)


def _gan(out: Path, rep: Path) -> str:
    from avatar3d.gan.snapshot import load_snapshot
    from avatar3d.training.job import FINAL_SNAPSHOT
    from avatar3d.gan.samples import sample_grids

    snaps = sorted((out / "gan").glob(f"*/{FINAL_SNAPSHOT}"))
    if not snaps:
        return ""
    snap = load_snapshot(snaps[-1])
    from avatar3d.gan.config import GANConfig

    grids = sample_grids(snap.generator, GANConfig.from_dict(snap.gan_config))
    parts = [f"<h2>4. 3D GAN samples ({snap.info.get('kimg', 0):.3f} kimg)</h2>",
             f'<p class="note">snapshot: {html.escape(str(snaps[-1]))}; rows = identities, columns = yaws; '
             "identities are mapped with the front camera</p>"]
    for group, image in grids.items():
        image.resize((image.width * 2, image.height * 2)).save(rep / f"gan_{group}.png")
        parts.append(_img(f"gan_{group}.png", f"{group} views"))
    return "\n".join(parts)


def _copy(src: Path, rep: Path, name: str) -> bool:
    if not src.is_file():
        return False
    shutil.copyfile(src, rep / name)
    return True


def _evaluation(out: Path, rep: Path) -> str:
    ev = out / "evaluate"
    if not ev.is_dir():
        return ""
    parts = ["<h2>5. Evaluation of the generator</h2>"]
    fid_file = ev / "fid.json"
    if fid_file.is_file():
        fid = json.loads(fid_file.read_text())
        per_view = fid.get("per_view", {})
        parts.append(_table([{"FID": f"{fid.get('overall', float('nan')):.1f}",
                              **{f"FID {k}": f"{v:.1f}" for k, v in per_view.items()}}]))
        protocol = fid.get("protocol", {})
        parts.append(f'<p class="note">protocol: {html.escape(json.dumps(protocol))}</p>')
    for src, name, caption in [(ev / "walk" / "walk_grid.png", "walk_grid.png", "latent walk: w interpolated while the camera swings"),
                               (ev / "walk" / "walk.gif", "walk.gif", "latent walk (animated)"),
                               (ev / "turntable" / "turntable.gif", "turntable.gif", "turntable of identity 0"),
                               (ev / "mesh" / "avatar_preview.png", "mesh_preview.png", "marching-cubes mesh (avatar.glb)")]:
        if _copy(src, rep, name):
            parts.append(_img(name, caption))
    if not (ev / "mesh" / "avatar.glb").is_file():
        parts.append('<p class="note">No mesh: the generator has no surface at the chosen density level yet '
                     "(train longer or lower mesh_iso).</p>")
    return "\n".join(parts)


def _image_to_avatar(out: Path, rep: Path) -> str:
    ia = out / "image_to_avatar"
    if not (ia / "views.png").is_file():
        return ""
    parts = ["<h2>6. Image to avatar (W-space diffusion prior)</h2>"]
    for src, name, caption in [(ia / "input.png", "i2a_input.png", "input image (from the dataset)"),
                               (ia / "views.png", "i2a_views.png", "the avatar the prior sampled, from several yaws"),
                               (ia / "turntable.gif", "i2a_turntable.gif", "its turntable")]:
        if _copy(src, rep, name):
            parts.append(_img(name, caption))
    return "\n".join(parts)


def _registry(tracking_uri: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    rows = []
    for model in client.search_registered_models():
        for v in client.search_model_versions(f"name='{model.name}'"):
            rows.append({"model": model.name, "version": v.version, "uri": f"models:/{model.name}/{v.version}",
                         "run": v.run_id})
    if not rows:
        return ""
    return (f"<h2>7. Registered models</h2><p class=\"note\">MLflow store: {html.escape(tracking_uri)}</p>"
            + _table(rows))
