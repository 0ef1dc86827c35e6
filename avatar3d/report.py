"""An HTML report of a pipeline run that a person can open: ``<output_dir>/report/index.html``.

Shows what each stage produced, from its files on disk and the MLflow store:
what painted the images (headline), guidance contact sheet, prompt samples,
dataset samples per view group and the dataset card's counts (with the
failure modes the procedural painter modelled), GAN samples per view group
from the final snapshot, training curves over kimg, evaluation (FID, truth
metrics, truth vs generated per view group, walk, turntable, mesh), image to
avatar (beside the held-out identity's truth views) and the registered models.

Every mesh is shown in an interactive 3D viewer that works offline (the mesh
embedded in the page, the viewer's script copied beside it:
:mod:`avatar3d.evaluation.viewer`), with its static preview PNG beside it;
where the viewer was not installed (no npm) one line says how to add it.
"""
from __future__ import annotations

import html
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import trimesh
import yaml
from mlflow import MlflowClient
from PIL import Image

from avatar3d.atomic import atomic_write
from avatar3d.datagen.dataset import dataset_files, decode_png, read_table
from avatar3d.datagen.config import TINY_MODEL_ID
from avatar3d.datagen.procedural import PAINTER_ID
from avatar3d.datagen.shards import CARD_FILE
from avatar3d.evaluation import viewer
from avatar3d.evaluation.mesh import MESH_FORMATS, glb_bytes
from avatar3d.evaluation.truth import (MATCH_CAMERA, generator_views, has_truth, heldout_identities, render_truth,
                                      truth_specs)
from avatar3d.gan.config import GANConfig
from avatar3d.gan.samples import image_grid, sample_grids
from avatar3d.gan.snapshot import load_snapshot
from avatar3d.prior.encoder import ENCODER_CARD, TINY
from avatar3d.prompts import sample_prompts
from avatar3d.scene.pose_bins import VIEW_GROUPS
from avatar3d.training.job import FINAL_SNAPSHOT


def write_report(output_dir: str | Path, tracking_uri: str) -> Path:
    out = Path(output_dir)
    rep = out / "report"
    rep.mkdir(parents=True, exist_ok=True)
    sections = [_headline(out), _guidance(out, rep), _prompts(), _dataset(out, rep), _gan(out, rep),
                _curves(out, rep, tracking_uri), _evaluation(out, rep), _image_to_avatar(out, rep),
                _text_to_avatar(out, rep), _registry(tracking_uri)]
    body = "\n".join(s for s in sections if s)
    scripts = ""
    if "<model-viewer" in body:  # the mesh viewers: their script beside the page, their status lines at the end
        scripts = viewer.script_tag()
        body += "\n" + viewer.STATUS_SCRIPT
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>avatar3d report</title>{scripts}
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


def _painter(out: Path) -> str:
    """The base model id the dataset card records ("" when there is no card)."""
    card = out / "dataset" / "dataset_card.json"
    if not card.is_file():
        return ""
    return str(json.loads(card.read_text()).get("model_ids", {}).get("base_model", ""))


def _headline(out: Path) -> str:
    painter = _painter(out)
    if not painter:
        return ""
    if painter == PAINTER_ID:
        text = ("The images of this run were painted by the <b>procedural painter</b> "
                f"(<code>{PAINTER_ID}</code>): parametric head-and-shoulders avatars rendered on the CPU, with "
                "ControlNet's failure modes at side and back views modelled and the truth (real camera, identity, "
                "silhouette) kept beside every row. It is a synthetic test bed with known truth, not Stable "
                "Diffusion; the truth metrics below exist only because of it.")
    elif painter == TINY_MODEL_ID:
        text = ("The images of this run were painted by the <b>tiny random-weight</b> Stable Diffusion + "
                "ControlNet pipeline: the real classes, no trained weights, so every image is noise by "
                "construction and this report checks the plumbing only.")
    else:
        text = (f"The images of this run were painted by Stable Diffusion + ControlNet "
                f"(<code>{html.escape(painter)}</code>).")
    text += _transfer_note(out)
    return f'<p style="background:#fff6d5;padding:8px;border:1px solid #e0c060">{text}</p>'


def _transfer_note(out: Path) -> str:
    """When the GAN started from a shipped state (``resume``) or snapshot (``transfer``): say so, with its
    provenance and the from-scratch figures recorded beside it (``<state or snapshot>.json``)."""
    configs = sorted((out / "gan").glob("*/config.yaml"))
    if not configs:
        return ""
    cfg = yaml.safe_load(configs[-1].read_text()) or {}
    start, how = (cfg.get("resume"), "continued from the training state") if cfg.get("resume") else (
        cfg.get("transfer"), "fine-tuned from the snapshot")
    if not start:
        return " The GAN was trained from scratch in this run."
    text = f" <b>The GAN was not trained from scratch here</b>: it {how} <code>{html.escape(str(start))}</code>"
    record = Path(start).with_suffix(".json")
    if record.is_file():
        info = json.loads(record.read_text())
        text += (f", trained {info.get('kimg', '?')} kimg in the procedural world (another seed) by <code>"
                 f"{html.escape(str(info.get('command', '?')))}</code>")
        scratch = info.get("from_scratch_at_demo_budget")
        if scratch:
            v = scratch.get("values", {})
            text += (f". From scratch at a demo's budget ({scratch.get('kimg', '?')} kimg) the same generator reached "
                     f"{_truth_figures(v)}"
                     + (f" (scored by {html.escape(scratch['scored_by'])})" if scratch.get("scored_by") else "")
                     + ", against this run's figures below")
        control = info.get("shuffled_label_control")
        if control:
            seed = f" (truth seed {control['truth_seed']})" if "truth_seed" in control else ""
            # labels_are: what labels_values scored, when not the shipped state itself (e.g. the earlier state
            # a longer-trained one continues, the control's equal in kimg)
            text += (f". Control: a {control.get('kimg', '?')}-kimg run of the same command with its camera labels "
                     f"shuffled within each batch reached {_truth_figures(control.get('values', {}))}; "
                     f"{html.escape(control.get('labels_are', 'the shipped state'))}, scored the same way{seed}, "
                     f"{_truth_figures(control.get('labels_values', {}))}")
            if control.get("silhouettes"):  # how the record's silhouettes were rendered, if not as this run's
                text += f" ({html.escape(control['silhouettes'])})"
    return text + "."


def _truth_figures(v: dict) -> str:
    return (f"silhouette agreement {_num(v.get('sil_agreement'))} (where identities differ "
            f"{_num(v.get('sil_varying'))}) and view consistency front / side / back "
            f"{_num(v.get('view_front'), '.2f')} / {_num(v.get('view_side'), '.2f')} / "
            f"{_num(v.get('view_back'), '.2f')}")


def _guidance(out: Path, rep: Path) -> str:
    sheet = out / "guidance" / "contact_sheet.png"
    if not sheet.is_file():
        return ""
    shutil.copyfile(sheet, rep / "guidance.png")
    return ("<h2>1. Guidance from the canonical head</h2>"
            + _img("guidance.png", "OpenPose / depth / normal / hybrid guidance for evenly spaced yaws"))


def _prompts() -> str:
    rows = [{"style": s.style, "view": s.view, "yaw": f"{s.yaw:+.0f}", "prompt": s.prompt,
             "negative (view part)": s.negative_prompt.split("text, ")[-1]} for s in sample_prompts(6, 0)]
    return "<h2>2. View- and attribute-aware prompts (seed 0)</h2>" + _table(rows)


def _dataset(out: Path, rep: Path) -> str:
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
    parts.append(_failures(ds, rep))
    for group in VIEW_GROUPS:
        idx = [i for i, v in enumerate(table["view"]) if v == group][:8]
        if not idx:
            continue
        tiles = np.stack([np.asarray(Image.open(io.BytesIO(table["image_png"][i])).convert("RGB")) for i in idx])
        image_grid(tiles, 1, len(idx)).save(rep / f"dataset_{group}.png")
        parts.append(_img(f"dataset_{group}.png", f"{group} views"))
    return "\n".join(parts)


def _failures(ds: Path, rep: Path) -> str:
    """The procedural painter's modelled ControlNet misses: counts per view group and a strip of examples."""
    table = read_table(ds)
    if "truth_failure" not in table.column_names or table.column("truth_failure").null_count == table.num_rows:
        return ""
    rows = table.select(["view", "yaw", "truth_yaw", "truth_failure", "image_png"]).to_pylist()
    counts = Counter((r["view"], r["truth_failure"]) for r in rows)
    views = sorted({v for v, _ in counts})
    lines = [{"view": v, **{f: counts.get((v, f), 0) for f in ("none", "pose_error", "janus", "flip")}}
             for v in views]
    examples = []  # up to three of each kind, so the rarer Janus and flipped views show too
    for kind in ("pose_error", "janus", "flip"):
        examples += [r for r in rows if r["truth_failure"] == kind][:3]
    parts = ['<p>Modelled ControlNet misses (labels stay the requested camera; the truth columns say what was '
             "painted):</p>", _table(lines)]
    if examples:
        image_grid(np.stack([decode_png(r["image_png"]) for r in examples]), 1, len(examples)).save(
            rep / "dataset_failures.png")
        caption = "; ".join(f"{r['truth_failure']}: asked yaw {r['yaw']:+.0f}, painted {r['truth_yaw']:+.0f}"
                            for r in examples)
        parts.append(_img("dataset_failures.png", caption))
    return "\n".join(parts)


def _final_snapshot(out: Path) -> Path | None:
    """The GAN stage's final inference snapshot (``<out>/gan/<run name>/...``), or None before it ran."""
    snaps = sorted((out / "gan").glob(f"*/{FINAL_SNAPSHOT}"))
    return snaps[-1] if snaps else None


def _curves(out: Path, rep: Path, tracking_uri: str) -> str:
    """Losses and truth metrics of the GAN run over kimg, from its MLflow history."""
    snapshot = _final_snapshot(out)
    if snapshot is None:
        return ""
    name = snapshot.parent.name  # the run folder is named after the run
    client = MlflowClient(tracking_uri=tracking_uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
            if name and r.info.run_name == name]
    if not runs:
        return ""
    run = runs[0]
    wanted = [k for k in sorted(run.data.metrics) if k in ("loss_G", "loss_D_real", "loss_D_fake")
              or k.startswith("truth_view_") or k.startswith("truth_kid_") or k in ("truth_sil_agreement",
                                                                                     "truth_sil_baseline")]
    if not wanted:
        return ""
    # Local on purpose: matplotlib.use("Agg") must run before pyplot's import, and at the top of this module it
    # would switch the backend of every process that merely imports avatar3d.chain. Only the curves need it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("losses", [k for k in wanted if k.startswith("loss")]),
              ("view consistency (share of renders classified as their camera's group)",
               [k for k in wanted if k.startswith("truth_view_")]),
              ("silhouette agreement (IoU at held-out views)", [k for k in wanted if k.startswith("truth_sil")]),
              ("KID per view vs truth renders (view-classifier features)", [k for k in wanted if k.startswith("truth_kid")])]
    panels = [(t, ks) for t, ks in panels if ks]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2))
    for ax, (title, keys) in zip(np.atleast_1d(axes), panels):
        for key in keys:
            hist = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            ax.plot([m.step / 1e3 for m in hist], [m.value for m in hist], marker="." if len(hist) < 20 else None,
                    label=key.removeprefix("truth_"))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("kimg")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(rep / "curves.png", dpi=90)
    plt.close(fig)
    return (f"<h2>Training curves ({html.escape(name)})</h2>"
            + _img("curves.png", "from the run's MLflow history; truth metrics every truth_ticks ticks"))


def _gan(out: Path, rep: Path) -> str:
    snapshot = _final_snapshot(out)
    if snapshot is None:
        return ""
    snap = load_snapshot(snapshot)
    grids = sample_grids(snap.generator, GANConfig.from_dict(snap.gan_config))
    parts = [f"<h2>4. 3D GAN samples ({snap.info.get('kimg', 0):.3f} kimg)</h2>",
             f'<p class="note">snapshot: {html.escape(str(snapshot))}; rows = identities, columns = yaws; '
             "identities are mapped with the front camera</p>"]
    for group, image in grids.items():
        image.resize((image.width * 2, image.height * 2)).save(rep / f"gan_{group}.png")
        parts.append(_img(f"gan_{group}.png", f"{group} views"))
    return "\n".join(parts)


def _num(value, spec: str = ".3f") -> str:
    """A figure from a result file; NaN or null (a view group with too few images) reads "n/a"."""
    if value is None or (isinstance(value, float) and value != value):
        return "n/a (too few images)"
    return format(value, spec)


def _copy(src: Path, rep: Path, name: str) -> bool:
    if not src.is_file():
        return False
    shutil.copyfile(src, rep / name)
    return True


def _figures(rep: Path, figures: list[tuple[Path, str, str]]) -> list[str]:
    """(source, name in the report, caption) -> an <img> for each source that exists, copied beside the page."""
    return [_img(name, caption) for src, name, caption in figures if _copy(src, rep, name)]


def _evaluation(out: Path, rep: Path) -> str:
    ev = out / "evaluate"
    if not ev.is_dir():
        return ""
    parts = ["<h2>5. Evaluation of the generator</h2>"]
    fid_file = ev / "fid.json"
    if fid_file.is_file():
        fid = json.loads(fid_file.read_text())
        per_view = fid.get("per_view", {})
        parts.append(_table([{"FID": _num(fid.get("overall"), ".1f"),
                              **{f"FID {k}": _num(v, ".1f") for k, v in per_view.items()}}]))
        protocol = fid.get("protocol", {})
        parts.append(f'<p class="note">protocol: {html.escape(json.dumps(protocol))}</p>')
    parts.append(_truth(ev, rep))
    parts.append(_truth_vs_generated(out, rep))
    parts += _figures(rep, [(ev / "walk" / "walk_grid.png", "walk_grid.png", "latent walk: w interpolated while the camera swings"),
                            (ev / "walk" / "walk.gif", "walk.gif", "latent walk (animated)"),
                            (ev / "turntable" / "turntable.gif", "turntable.gif", "turntable of identity 0")])
    meshes = [ev / "mesh" / f"avatar.{fmt}" for fmt in MESH_FORMATS if (ev / "mesh" / f"avatar.{fmt}").is_file()]
    preview = "mesh_preview.png" if _copy(ev / "mesh" / "avatar_preview.png", rep, "mesh_preview.png") else None
    if meshes:
        parts.append(_mesh(meshes[0], rep, preview, f"marching-cubes mesh ({meshes[0].name})", _painter(out)))
    else:
        if preview:
            parts.append(_img(preview, "marching-cubes mesh (preview)"))
        parts.append('<p class="note">No mesh: the generator has no surface at the chosen density level yet '
                     "(train longer or lower mesh_iso).</p>")
    return "\n".join(parts)


def _mesh(path: Path, rep: Path, preview: str | None, caption: str, painter: str) -> str:
    """An exported mesh in the interactive viewer (the mesh embedded, the script copied beside the report),
    its static preview PNG beside it; one line saying how to install the viewer where npm was missing."""
    label = f"{caption}. {viewer.painter_note(painter)}"
    still = _img(preview, f"{caption}: static preview (ray-cast from the front)") if preview else ""
    if viewer.viewer_script() is None:
        return (f'<p class="note avatar3d-viewer-missing">Interactive 3D viewer not installed: '
                f"{html.escape(viewer.INSTALL_HINT)}.</p>{still}")
    viewer.install_script(rep)
    glb = path.read_bytes() if path.suffix.lower() == ".glb" else _as_glb(path)
    block = viewer.viewer_block(glb, caption, preview)
    return (f'<div style="display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap">'
            f'<figure style="margin:0">{block}<figcaption class="note" style="max-width:420px">'
            f"{html.escape(label)}</figcaption></figure>{still}</div>")


def _as_glb(path: Path) -> bytes:
    """A PLY / OBJ mesh as GLB bytes (the viewer reads glTF), vertex colours kept."""
    return glb_bytes(trimesh.load(path, force="mesh", process=False))


def _truth(ev: Path, rep: Path) -> str:
    path = ev / "truth.json"
    if not path.is_file():
        return ""
    data = json.loads(path.read_text())
    v, c = data["values"], data["counts"]
    ceiling = (f"; truth identities scored as if generated {_num(v['sil_ceiling'])}" if "sil_ceiling" in v else "")
    varying_ceiling = (f"; truth identities {_num(v['sil_varying_ceiling'])}" if "sil_varying_ceiling" in v else "")
    rows = [
        {"measure": "silhouette agreement (IoU, held-out left / right / back views)",
         "value": _num(v['sil_agreement']), "control": f"mean-silhouette baseline {_num(v['sil_baseline'])}{ceiling}",
         "images": f"{c['sil_avatars']} avatars x 3 views, matched among {c['sil_identities']} truth identities"},
        {"measure": "silhouette agreement where identities differ", "value": _num(v['sil_varying']),
         "control": f"mean-silhouette baseline {_num(v['sil_varying_baseline'])}{varying_ceiling}", "images": "same"},
        *([{"measure": "front outline fit to the matched identity (IoU, front view)",
            "value": _num(v['sil_front_match']),
            "control": (f"truth identities {_num(v['sil_front_match_ceiling'])}" if "sil_front_match_ceiling" in v
                        else ""), "images": "same avatars, front view"}] if "sil_front_match" in v else []),
        *[{"measure": f"view consistency, {g}", "value": _num(v[f'view_{g}'], ".2f"), "control": "chance 0.33",
           "images": f"{c['view_per_group']} renders"} for g in ("front", "side", "back")],
        *[{"measure": f"KID, {g} (vs truth renders, Inception features)", "value": _num(v[f'kid_inception_{g}'], ".3g"),
           "control": "about 0 = same distribution", "images": f"{c['kid_per_group']} fakes vs {c['kid_per_group']} truth"}
          for g in ("front", "side", "back") if f"kid_inception_{g}" in v],
        *[{"measure": f"KID, {g} (vs truth renders, view-classifier features)", "value": _num(v[f'kid_{g}'], ".3g"),
           "control": "about 0 = same distribution",
           "images": f"{c['kid_per_group']} fakes vs {c['kid_per_group']} truth"} for g in ("front", "side", "back")],
        *[{"measure": f"FID, {g} (vs truth renders, Inception features)", "value": _num(v[f'fid_inception_{g}'], ".1f"),
           "control": "mostly estimator bias at these counts; read KID",
           "images": (f"{c['fid_all']} fakes vs {c['fid_all']} truth" if g == "all"
                      else f"{c['kid_per_group']} fakes vs {c['kid_per_group']} truth")}
          for g in ("all", "front", "side", "back") if f"fid_inception_{g}" in v],
    ]
    if "classifier_accuracy_blurred" in v:  # the classifier trained on degraded renders (2026-12-04 on)
        classifier = ("a small CNN trained on truth renders degraded at random (blur, colour, framing, noise; "
                      f"accuracy {_num(v['classifier_accuracy'], '.2f')} on {c['classifier_test']} held-out truth "
                      f"renders, {_num(v['classifier_accuracy_blurred'], '.2f')} on the same blurred)")
    else:
        classifier = (f"a small CNN trained on clean truth renders (accuracy {_num(v['classifier_accuracy'], '.2f')} "
                      f"on {c['classifier_test']} held-out truth renders)")
    janus = (f"A Janus head should fail at the back, but this classifier still calls "
             f"{_num(v['classifier_janus_as_back'], '.2f')} of held-out Janus backs 'back': where that share is "
             "high it is a weak Janus detector. " if "classifier_janus_as_back" in v else
             "A Janus head should fail at the back. ")
    return ("<h3>Truth metrics (procedural world)</h3>" + _table(rows)
            + f'<p class="note">View consistency: {classifier} names each generator render front / side / back; '
            f"the share that matches the render's camera. {janus}"
            "Silhouette agreement: each generated avatar is matched to the held-out truth identity whose "
            "front silhouette it overlaps most, then compared with that identity at the side and back cameras; "
            "the baseline answers the mean truth silhouette for everyone, and truth identities outside the world, "
            "scored the same way, show what a generator that paints this world exactly would get. "
            + ("The front outline fit is what the match rests on: an avatar whose front fits its nearest identity "
               "much less closely than those outside truth identities do is matched to an identity whose shape it "
               "does not share, and that identity's side and back are then a poor guess for it. "
               if "sil_front_match" in v else "")
            + "Protocol: "
            f"{html.escape(json.dumps(data.get('protocol', {})))}</p>")


def _truth_vs_generated(out: Path, rep: Path, n: int = 6) -> str:
    """Held-out truth identities beside generated avatars at the same front / side / back cameras."""
    ds = out / "dataset"
    snapshot = _final_snapshot(out)
    if snapshot is None or not ds.is_dir() or not has_truth(str(ds)):
        return ""
    G = load_snapshot(snapshot).generator
    size = int(G.cfg.output_resolution)
    identities = heldout_identities(truth_specs(str(ds)), n)
    yaws = {"front": 0.0, "side": 90.0, "back": 180.0}
    truth, fake = [], []
    for yaw in yaws.values():
        images, _ = render_truth(identities, [yaw] * n, [0.0] * n, size)
        truth.append(images)
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(0))
    for yaw in yaws.values():
        images, _ = generator_views(G, [yaw] * n, [0.0] * n, z=z, condition=MATCH_CAMERA)  # one avatar per column
        fake.append(images)
    image_grid(np.concatenate(truth), len(yaws), n).save(rep / "truth_views.png")
    image_grid(np.concatenate(fake), len(yaws), n).save(rep / "generated_views.png")
    return ("<h3>Truth vs generated, per view group</h3>"
            + _img("truth_views.png", "held-out truth identities (columns) at yaw 0 / 90 / 180 (rows)")
            + _img("generated_views.png", "generated avatars (columns, one latent each) at the same cameras"))


def _image_to_avatar(out: Path, rep: Path) -> str:
    ia = out / "image_to_avatar"
    if not (ia / "views.png").is_file():
        return ""
    parts = ["<h2>6. Image to avatar (W-space diffusion prior)</h2>"]
    held_out = (ia / "truth_views.png").is_file()
    source = "a held-out identity's truth front view (no dataset row shows it)" if held_out else "from the dataset"
    parts += _figures(rep, [(ia / "input.png", "i2a_input.png", f"input image ({source})"),
                            (ia / "views.png", "i2a_views.png", "the avatar the prior sampled, from several yaws"),
                            (ia / "truth_views.png", "i2a_truth.png", "that identity's truth at the same yaws"),
                            (ia / "turntable.gif", "i2a_turntable.gif", "its turntable")])
    encoder = _image_encoder(ia / "avatar.json")
    if encoder:
        parts.append(f'<p class="note">Image encoder of the prior: {html.escape(encoder)}</p>')
    if (ia / "mesh.ply").is_file():
        parts.append(_mesh(ia / "mesh.ply", rep, None, "its marching-cubes mesh (mesh.ply)", _painter(out)))
    return "\n".join(parts)


def _image_encoder(record: Path) -> str:
    """What the prior that made an avatar conditions on, in words (from the avatar's record)."""
    if not record.is_file():
        return ""
    name = json.loads(record.read_text()).get("image_encoder")
    if not name:
        return ""
    if name == TINY:
        return ("the tiny preset's random two-layer CLIP tower (random weights): the prior conditions on a random "
                "projection of the pixels")
    card = Path(name).expanduser() / ENCODER_CARD
    if card.is_file():
        return f"{name}: {json.loads(card.read_text()).get('what', '')}"
    return f"{name} (loaded with from_pretrained; no card beside it says what it was trained on)"


def _text_to_avatar(out: Path, rep: Path) -> str:
    ta = out / "text_to_avatar"
    if not (ta / "text_to_avatar.json").is_file() or not (ta / "views.png").is_file():
        return ""
    summary = json.loads((ta / "text_to_avatar.json").read_text())
    mapped = summary.get("attributes") or {}
    parts = ["<h2>7. Text to avatar</h2>",
             f"<p>Prompt: <b>{html.escape(summary.get('prompt', ''))}</b></p>",
             f"<p class=\"note\">Front prompt: {html.escape(summary.get('front_prompt', ''))}<br>"
             f"Painted by: {html.escape(summary.get('painter', ''))}<br>"
             f"Mapped attributes: {html.escape(', '.join(f'{k}={v!r}' for k, v in mapped.items()) or 'none')}; "
             f"unmapped phrases (kept in the prompt): {html.escape(', '.join(summary.get('unmapped_phrases') or []) or 'none')}"
             "</p>",
             "<p class=\"note\">The painting follows the mapped attributes by construction; whether the avatar "
             "keeps them is measured in evaluation/text_to_avatar/README.md.</p>"]
    parts += _figures(rep, [(ta / "painted_front.png", "t2a_painted.png", "the painted front view"),
                            (ta / "views.png", "t2a_views.png", "the avatar the prior sampled from it, from several yaws"),
                            (ta / "turntable.gif", "t2a_turntable.gif", "its turntable")])
    if (ta / "mesh.ply").is_file():
        parts.append(_mesh(ta / "mesh.ply", rep, None, "its marching-cubes mesh (mesh.ply)", _painter(out)))
    return "\n".join(parts)


def _registry(tracking_uri: str) -> str:
    client = MlflowClient(tracking_uri=tracking_uri)
    rows = []
    for model in client.search_registered_models():
        for v in client.search_model_versions(f"name='{model.name}'"):
            aliases = ", ".join(f"@{alias}" for alias, version in sorted((model.aliases or {}).items())
                                if str(version) == str(v.version))
            rows.append({"model": model.name, "version": v.version, "uri": f"models:/{model.name}/{v.version}",
                         "aliases": aliases or "-", "run": v.run_id})
    if not rows:
        return ""
    return (f"<h2>8. Registered models</h2><p class=\"note\">MLflow store: {html.escape(tracking_uri)}</p>"
            + _table(rows))
