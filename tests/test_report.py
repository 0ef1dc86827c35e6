"""The HTML report shows each stage's numbers and pictures in that stage's section (parsed, not grepped).

A pipeline output folder is laid out by hand with known figures (FID with a view group too small, truth
metrics, a mesh and its preview, image-to-avatar pictures, a training run's history, registered models in an
MLflow store) and every figure is looked for in the section it belongs to.
"""
import base64
import io
import math
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from mlflow import MlflowClient
from PIL import Image

from avatar3d.datagen.procedural import PAINTER_ID
from avatar3d.evaluation import viewer
from avatar3d.evaluation.fid import FIDResult
from avatar3d.evaluation.truth import TruthMetrics
from avatar3d.gan import GANConfig, TriPlaneGenerator
from avatar3d.gan.snapshot import save_snapshot
from avatar3d.report import _mesh, write_report
from avatar3d.training.job import FINAL_SNAPSHOT
from tests.training.fixtures import MICRO_GAN

torch.set_num_threads(1)

FID = {"overall": 123.456, "front": 111.04, "side": 222.06, "back": math.nan}  # back: too few images
TRUTH_VALUES = {"sil_agreement": 0.8123, "sil_baseline": 0.6234, "sil_varying": 0.5345,
                "sil_varying_baseline": 0.4456, "view_front": 0.91, "view_side": 0.72, "view_back": 0.53,
                "kid_front": 0.0123, "kid_side": 0.0234, "kid_back": 0.0345, "classifier_accuracy": 0.97}
TRUTH_COUNTS = {"sil_avatars": 12, "sil_identities": 64, "view_per_group": 48, "kid_per_group": 40,
                "classifier_test": 96}
REGISTERED = [("tiny-gan", "1"), ("tiny-gan", "2"), ("lora-grn", "1")]
KIMG = 0.512


class Sections(HTMLParser):
    """Splits the page at <h2> (sections) and <h3> (subsections); collects text, tables and images of each."""

    def __init__(self):
        super().__init__()
        self.sections, self.subsections = {}, {}
        self._h2 = self._h3 = None
        self._heading = None
        self._cell = None

    def _targets(self):
        return [d for d in (self.sections.get(self._h2), self.subsections.get(self._h3)) if d is not None]

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("h2", "h3"):
            self._heading = [tag, ""]
        elif tag == "table":
            for d in self._targets():
                d["tables"].append([])
        elif tag == "tr":
            for d in self._targets():
                d["tables"][-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            for d in self._targets():
                d["images"].append(attrs["src"])
        elif tag == "model-viewer":
            for d in self._targets():
                d["viewers"].append(attrs)

    def handle_endtag(self, tag):
        if self._heading and tag == self._heading[0]:
            kind, text = self._heading
            self._heading = None
            if kind == "h2":
                self._h2, self._h3 = text, None
                self.sections[text] = {"text": "", "tables": [], "images": [], "viewers": []}
            else:
                self._h3 = text
                self.subsections[text] = {"text": "", "tables": [], "images": [], "viewers": []}
        elif tag in ("td", "th") and self._cell is not None:
            for d in self._targets():
                d["tables"][-1][-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._heading:
            self._heading[1] += data
            return
        if self._cell is not None:
            self._cell += data
        for d in self._targets():
            d["text"] += data


TEXT_PROMPT = "a girl with red hair"


def _section(sections, prefix):
    (name,) = [k for k in sections if k.startswith(prefix)]
    return sections[name]


def _image(path: Path, seed: int, size=(24, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    # GAN stage: the final snapshot of run "run" (the report finds its MLflow run by this folder's name).
    cfg = GANConfig.tiny(**MICRO_GAN)
    torch.manual_seed(0)
    save_snapshot(out / "gan" / "run" / FINAL_SNAPSHOT, TriPlaneGenerator(cfg), cfg.to_dict(), {"kimg": KIMG})
    # Evaluation stage: FID (its own writer: NaN is stored as null), truth metrics, a mesh and its preview.
    ev = out / "evaluate"
    ev.mkdir()
    FIDResult(overall=FID["overall"], per_view={g: FID[g] for g in ("front", "side", "back")},
              protocol={"num_fakes": 8, "seed": 3, "feature_extractor": "inception-fid-helper"}
              ).save_json(ev / "fid.json")
    (ev / "truth.json").write_text(TruthMetrics(TRUTH_VALUES, TRUTH_COUNTS, {"seed": 5}).to_json())
    _image(ev / "mesh" / "avatar_preview.png", 1)
    box = trimesh.creation.box(extents=(0.4, 0.5, 0.3))
    box.visual.vertex_colors = np.tile([200, 120, 40, 255], (len(box.vertices), 1)).astype(np.uint8)
    (ev / "mesh" / "avatar.glb").write_bytes(box.export(file_type="glb"))
    # Image to avatar: the input, the sampled avatar's views, the truth views, a turntable.
    ia = out / "image_to_avatar"
    for name, seed in (("input.png", 2), ("views.png", 3), ("truth_views.png", 4)):
        _image(ia / name, seed)
    frames = [Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)) for i in range(3)]
    frames[0].save(ia / "turntable.gif", save_all=True, append_images=frames[1:])
    trimesh.creation.icosphere(subdivisions=1, radius=0.3).export(ia / "mesh.ply")
    encoder = out / "encoder"  # a world encoder's folder: its card says what it is
    encoder.mkdir()
    (encoder / "world_encoder.json").write_text(json.dumps({"what": "a tower trained in this world (not CLIP)"}))
    (ia / "avatar.json").write_text(json.dumps({"seed": 0, "image_encoder": str(encoder)}))
    # Text to avatar: the summary the stage writes, the painted front, the avatar's views, a mesh.
    ta = out / "text_to_avatar"
    for name, seed in (("painted_front.png", 5), ("views.png", 6)):
        _image(ta / name, seed)
    (ta / "text_to_avatar.json").write_text(json.dumps({
        "prompt": TEXT_PROMPT, "front_prompt": f"cartoon, front view, {TEXT_PROMPT}",
        "painter": "procedural painter (test)", "attributes": {"hair_color": "red hair"},
        "unmapped_phrases": ["girl"]}))
    trimesh.creation.icosphere(subdivisions=1, radius=0.3).export(ta / "mesh.ply")
    # MLflow: the GAN run's history and three registered model versions.
    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("report-test", artifact_location=(out / "mlartifacts").as_uri())
    run = client.create_run(exp, run_name="run")
    for step, loss in ((256, 1.5), (512, 1.2)):
        client.log_metric(run.info.run_id, "loss_G", loss, step=step)
        client.log_metric(run.info.run_id, "truth_view_front", loss / 2, step=step)
    client.set_terminated(run.info.run_id)
    for name in dict.fromkeys(n for n, _ in REGISTERED):
        client.create_registered_model(name)
    for name, _ in REGISTERED:
        client.create_model_version(name, (out / "mlartifacts" / name).as_uri(), run_id=run.info.run_id)
    client.set_registered_model_alias(REGISTERED[0][0], "candidate", REGISTERED[0][1])
    page = write_report(out, uri)
    parser = Sections()
    parser.feed(page.read_text())
    return {"out": out, "rep": page.parent, "sections": parser.sections, "sub": parser.subsections,
            "run_id": run.info.run_id, "uri": uri}


def test_fid_section_shows_the_numbers_per_view_and_the_protocol(report):
    ev = _section(report["sections"], "5. Evaluation")
    (header, row), *_ = ev["tables"]
    assert dict(zip(header, row)) == {"FID": "123.5", "FID front": "111.0", "FID side": "222.1",
                                      "FID back": row[3]}
    assert row[3].startswith("n/a")  # null in fid.json: a group with too few images, not a number, no crash
    assert '"num_fakes": 8' in ev["text"] and '"seed": 3' in ev["text"] and "inception-fid-helper" in ev["text"]


def test_truth_metrics_show_each_value_beside_its_control(report):
    truth = report["sub"]["Truth metrics (procedural world)"]
    (table,) = truth["tables"]
    header, *rows = table
    by_measure = {r[0]: dict(zip(header, r)) for r in rows}
    sil = by_measure["silhouette agreement (IoU, held-out left / right / back views)"]
    assert (sil["value"], sil["control"]) == ("0.812", "mean-silhouette baseline 0.623")
    assert sil["images"] == "12 avatars x 3 views, matched among 64 truth identities"
    varying = by_measure["silhouette agreement where identities differ"]
    assert (varying["value"], varying["control"]) == ("0.534", "mean-silhouette baseline 0.446")
    for group, value in (("front", "0.91"), ("side", "0.72"), ("back", "0.53")):
        assert by_measure[f"view consistency, {group}"]["value"] == value
        assert by_measure[f"view consistency, {group}"]["images"] == "48 renders"
    for group, value in (("front", "0.0123"), ("side", "0.0234"), ("back", "0.0345")):
        kid = by_measure[f"KID, {group} (vs truth renders, view-classifier features)"]
        assert (kid["value"], kid["images"]) == (value, "40 fakes vs 40 truth")
    assert not any("Inception features" in m for m in by_measure)  # no kid_inception_* values given
    assert "trained on clean truth renders (accuracy 0.97 on 96 held-out truth renders)" in truth["text"]  # no blurred figure: an older truth.json
    assert "Janus backs" not in truth["text"]


def test_mesh_preview_is_shown_in_the_evaluation_section(report):
    ev = _section(report["sections"], "5. Evaluation")
    assert "mesh_preview.png" in ev["images"]
    src = report["out"] / "evaluate" / "mesh" / "avatar_preview.png"
    assert (report["rep"] / "mesh_preview.png").read_bytes() == src.read_bytes()
    assert "No mesh" not in ev["text"]


def _glb_of(viewer_attrs: dict) -> bytes:
    prefix = "data:model/gltf-binary;base64,"
    assert viewer_attrs["src"].startswith(prefix)
    return base64.b64decode(viewer_attrs["src"][len(prefix):])


needs_viewer = pytest.mark.skipif(viewer.viewer_script() is None, reason=f"viewer not installed: {viewer.INSTALL_HINT}")


@needs_viewer
def test_mesh_is_shown_in_the_offline_viewer_beside_its_preview(report):
    ev = _section(report["sections"], "5. Evaluation")
    (mv,) = ev["viewers"]
    assert _glb_of(mv) == (report["out"] / "evaluate" / "mesh" / "avatar.glb").read_bytes()
    assert mv["poster"] == "mesh_preview.png" and "camera-controls" in mv
    assert "mesh_preview.png" in ev["images"]  # the static preview stays beside it
    assert "What painted the images the generator learned from is not recorded" in ev["text"]  # no dataset card
    page = (report["rep"] / "index.html").read_text()
    assert (report["rep"] / viewer.VIEWER_SCRIPT).read_bytes() == viewer.viewer_script().read_bytes()
    assert f'<script src="{viewer.VIEWER_SCRIPT}"></script>' in page
    assert not re.search(r"https?://", page)  # works offline: no CDN, no URL at all
    assert "not installed" not in page


@needs_viewer
def test_image_to_avatar_mesh_is_shown_in_the_viewer_too(report):
    ia = _section(report["sections"], "6. Image to avatar")
    (mv,) = ia["viewers"]
    shown = trimesh.load(io.BytesIO(_glb_of(mv)), file_type="glb", force="mesh", process=False)
    ply = trimesh.load(report["out"] / "image_to_avatar" / "mesh.ply", force="mesh", process=False)
    assert np.allclose(shown.vertices, ply.vertices, atol=1e-6) and np.array_equal(shown.faces, ply.faces)


@needs_viewer
def test_mesh_viewer_is_labelled_with_what_painted_the_data(tmp_path):
    glb = tmp_path / "avatar.glb"
    glb.write_bytes(trimesh.creation.box().export(file_type="glb"))
    block = _mesh(glb, tmp_path, None, "marching-cubes mesh (avatar.glb)", PAINTER_ID)
    assert f"painted by the procedural painter ({PAINTER_ID})" in block and "<model-viewer" in block
    assert (tmp_path / viewer.VIEWER_SCRIPT).is_file()


def test_without_the_viewer_the_mesh_section_says_so_in_one_line_and_keeps_the_preview(tmp_path, monkeypatch):
    monkeypatch.setenv(viewer.VIEWER_ENV, str(tmp_path / "nowhere"))
    glb = tmp_path / "avatar.glb"
    glb.write_bytes(trimesh.creation.box().export(file_type="glb"))
    block = _mesh(glb, tmp_path, "mesh_preview.png", "marching-cubes mesh (avatar.glb)", PAINTER_ID)
    (note,) = re.findall(r'<p class="note avatar3d-viewer-missing">([^<]*)</p>', block)
    assert note.startswith("Interactive 3D viewer not installed") and "make install" in note
    assert '<img src="mesh_preview.png">' in block and "<model-viewer" not in block
    assert not (tmp_path / viewer.VIEWER_SCRIPT).exists()


def test_image_to_avatar_section_shows_input_avatar_truth_and_turntable(report):
    ia = _section(report["sections"], "6. Image to avatar")
    assert ia["images"] == ["i2a_input.png", "i2a_views.png", "i2a_truth.png", "i2a_turntable.gif"]
    for shown, src in (("i2a_input.png", "input.png"), ("i2a_views.png", "views.png"),
                       ("i2a_truth.png", "truth_views.png"), ("i2a_turntable.gif", "turntable.gif")):
        assert (report["rep"] / shown).read_bytes() == (report["out"] / "image_to_avatar" / src).read_bytes()
    assert "held-out identity" in ia["text"]  # truth views present: the input is a held-out identity
    assert "Image encoder of the prior: " in ia["text"] and "a tower trained in this world (not CLIP)" in ia["text"]
    assert not any(img.startswith("i2a") for name, s in report["sections"].items() if not name.startswith("6.")
                   for img in s["images"])


@pytest.mark.parametrize("record, words", [
    ({"image_encoder": "tiny"}, "random projection of the pixels"),
    ({"image_encoder": "openai/clip-vit-large-patch14"}, "openai/clip-vit-large-patch14 (loaded with from_pretrained; no card"),
    ({"seed": 0}, ""),  # an avatar written before the record named its encoder: no line
])
def test_the_image_encoder_is_named_in_words(tmp_path, record, words):
    from avatar3d.report import _image_encoder

    (tmp_path / "avatar.json").write_text(json.dumps(record))
    text = _image_encoder(tmp_path / "avatar.json")
    assert (words in text) if words else text == ""


def test_registered_models_are_listed_with_versions_uris_aliases_and_runs(report):
    reg = _section(report["sections"], "8. Registered models")
    (table,) = reg["tables"]
    header, *rows = table
    assert header == ["model", "version", "uri", "aliases", "run"]
    first = REGISTERED[0]
    assert sorted(tuple(r) for r in rows) == sorted(
        (name, version, f"models:/{name}/{version}", "@candidate" if (name, version) == first else "-",
         report["run_id"]) for name, version in REGISTERED)
    assert report["uri"] in reg["text"]


def test_text_to_avatar_section_shows_the_prompt_its_mapping_the_painting_and_the_avatar(report):
    ta = _section(report["sections"], "7. Text to avatar")
    assert TEXT_PROMPT in ta["text"] and "procedural painter (test)" in ta["text"]
    assert "hair_color='red hair'" in ta["text"] and "(kept in the prompt): girl" in ta["text"]
    assert ta["images"] == ["t2a_painted.png", "t2a_views.png"]
    for shown, src in (("t2a_painted.png", "painted_front.png"), ("t2a_views.png", "views.png")):
        assert (report["rep"] / shown).read_bytes() == (report["out"] / "text_to_avatar" / src).read_bytes()
    assert len(ta["viewers"]) == 1  # its mesh in the 3D viewer


def test_gan_and_training_curve_sections_come_from_the_final_snapshot_and_its_run(report):
    gan = _section(report["sections"], "4. 3D GAN samples")
    assert f"({KIMG:.3f} kimg)" in next(k for k in report["sections"] if k.startswith("4."))
    assert set(gan["images"]) == {"gan_front.png", "gan_side.png", "gan_back.png"}
    curves = report["sections"]["Training curves (run)"]
    assert curves["images"] == ["curves.png"] and (report["rep"] / "curves.png").stat().st_size > 0


def _painted_dataset(out: Path, base_model: str) -> Path:
    """A dataset folder as the generate stage leaves it, reduced to what the report reads: one Parquet file
    of rows (image, view, style) and the dataset card naming the painter."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds = out / "dataset"
    ds.mkdir(parents=True)
    pngs = []
    for seed in range(3):
        buf = io.BytesIO()
        Image.open(_image(out / f"tile{seed}.png", seed)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    pq.write_table(pa.table({"image_png": pngs, "view": ["front", "side", "back"], "style": ["a", "b", "a"]}),
                   ds / "part-00000.parquet")
    (ds / "dataset_card.json").write_text(json.dumps({
        "num_rows": 3, "image_sizes": [[24, 24]], "model_ids": {"base_model": base_model},
        "counts": {"style": {"a": 2, "b": 1}, "view": {"front": 1, "side": 1, "back": 1}}}))
    return out


def test_a_procedural_datasets_report_says_the_procedural_painter_painted_it(tmp_path):
    """README: the demo's images "are painted by the procedural painter ..., not by Stable Diffusion, and the
    report says so": the headline above the sections and the dataset section name it; a dataset painted by
    Stable Diffusion gets neither."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pages = {}
    for name, painter in (("procedural", PAINTER_ID), ("sd", "stable-diffusion-v1-5/stable-diffusion-v1-5")):
        page = write_report(_painted_dataset(tmp_path / name, painter), uri).read_text()
        headline = re.sub(r"<[^>]+>", "", page.partition("</h1>")[2].partition("<h2>")[0])
        parser = Sections()
        parser.feed(page)
        pages[name] = headline, _section(parser.sections, "3. Generated multi-view dataset")["text"]
    headline, dataset = pages["procedural"]
    assert "painted by the procedural painter" in headline and PAINTER_ID in headline
    assert "not Stable Diffusion" in headline
    assert "3 images" in dataset and PAINTER_ID in dataset
    headline, dataset = pages["sd"]
    assert "procedural painter" not in headline + dataset and PAINTER_ID not in headline + dataset
    assert "painted by Stable Diffusion + ControlNet (stable-diffusion-v1-5/stable-diffusion-v1-5)" in headline


def test_truth_metrics_show_the_ceiling_fid_and_the_classifiers_janus_share(tmp_path):
    from avatar3d.report import _truth

    values = {"sil_agreement": 0.864, "sil_baseline": 0.882, "sil_ceiling": 0.933, "sil_varying": 0.445,
              "sil_varying_baseline": 0.474, "sil_varying_ceiling": 0.643, "view_front": 1.0, "view_side": 1.0,
              "view_back": 0.708, "kid_front": 1.8, "kid_side": 0.28, "kid_back": 2.0, "classifier_accuracy": 0.911,
              "classifier_accuracy_blurred": 0.917, "classifier_janus_as_back": 0.708, "fid_inception_all": 164.26,
              **{f"fid_inception_{g}": f for g, f in (("front", 184.0), ("side", 198.1), ("back", 209.4))}}
    counts = {"sil_avatars": 32, "sil_identities": 64, "view_per_group": 48, "kid_per_group": 48,
              "classifier_test": 192, "sil_strangers": 32, "fid_all": 144}
    (tmp_path / "truth.json").write_text(json.dumps({"values": values, "counts": counts, "protocol": {}}))
    html_text = _truth(tmp_path, tmp_path)
    assert "mean-silhouette baseline 0.882; truth identities scored as if generated 0.933" in html_text
    assert "mean-silhouette baseline 0.474; truth identities 0.643" in html_text
    assert re.search(r"FID, all \(vs truth renders, Inception features\)</td><td>164\.3</td>.*?144 fakes vs 144 truth",
                     html_text)
    assert re.search(r"FID, back \(vs truth renders, Inception features\)</td><td>209\.4</td>.*?48 fakes vs 48 truth",
                     html_text)
    assert "0.92 on the same blurred" in html_text and "still calls 0.71 of held-out Janus backs" in html_text
    assert "front outline fit" not in html_text  # a truth.json from before the figure existed
    values.update(sil_front_match=0.879, sil_front_match_ceiling=0.953)
    (tmp_path / "truth.json").write_text(json.dumps({"values": values, "counts": counts, "protocol": {}}))
    assert re.search(r"front outline fit to the matched identity \(IoU, front view\)</td><td>0\.879</td>"
                     r"<td>truth identities 0\.953</td>", _truth(tmp_path, tmp_path))


def test_headline_gives_the_shipped_states_provenance_and_its_controls(tmp_path):
    from avatar3d.report import _transfer_note

    state = tmp_path / "assets" / "state"
    state.mkdir(parents=True)
    figures = lambda s, f, b: {"sil_agreement": s, "sil_varying": s / 2, "view_front": f, "view_side": 0.5,  # noqa: E731
                               "view_back": b}
    state.with_suffix(".json").write_text(json.dumps({
        "kimg": 16.384, "command": "avatar3d train-gan X",
        "from_scratch_at_demo_budget": {"kimg": 2.4, "values": {**figures(0.801, 0.02, 0.0), "sil_varying": 0.561},
                                        "scored_by": "an older classifier"},
        "shuffled_label_control": {"kimg": 16.4, "truth_seed": 0, "values": figures(0.811, 0.25, 0.125),
                                   "labels_values": figures(0.850, 1.0, 0.833)}}))
    (tmp_path / "out" / "gan" / "run").mkdir(parents=True)
    (tmp_path / "out" / "gan" / "run" / "config.yaml").write_text(f"resume: {state}\n")
    text = _transfer_note(tmp_path / "out")
    assert "<b>The GAN was not trained from scratch here</b>: it continued from the training state" in text
    assert "trained 16.384 kimg" in text and "avatar3d train-gan X" in text
    assert "view consistency front / side / back 0.02 / 0.50 / 0.00 (scored by an older classifier)" in text
    assert ("a 16.4-kimg run of the same command with its camera labels shuffled within each batch reached silhouette "
            "agreement 0.811 (where identities differ 0.406) and view consistency front / side / back 0.25 / 0.50 / "
            "0.12") in text
    assert ("; the shipped state, scored the same way (truth seed 0), silhouette agreement 0.850 (where identities "
            "differ 0.425) and view consistency front / side / back 1.00") in text
    assert "silhouettes rendered" not in text
    record = json.loads(state.with_suffix(".json").read_text())
    record["shuffled_label_control"]["silhouettes"] = "silhouettes rendered the old way"
    record["shuffled_label_control"]["labels_are"] = "the 16.4-kimg state this one continues"
    state.with_suffix(".json").write_text(json.dumps(record))
    text = _transfer_note(tmp_path / "out")
    assert "consistency front / side / back 1.00 / 0.50 / 0.83 (silhouettes rendered the old way)." in text
    assert "; the 16.4-kimg state this one continues, scored the same way (truth seed 0), silhouette" in text
    assert "the shipped state, scored" not in text
    (tmp_path / "out" / "gan" / "run" / "config.yaml").write_text("resume: null\n")
    assert _transfer_note(tmp_path / "out") == " The GAN was trained from scratch in this run."
