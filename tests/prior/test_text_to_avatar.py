"""text-to-avatar: prompt -> attribute mapping -> one painted front view -> prior -> avatar files.

Tiny throughout: the committed prior fixture (tests/fixtures/formats/prior: w_dim 8, 32 px
generator, 4 sampling steps), 32 px paintings, few views.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from avatar3d.cli import main
from avatar3d.config import ConfigError, load_config
from avatar3d.datagen.config import PipelineConfig
from avatar3d.datagen.procedural import _HAIR_COLOURS, identity_for
from avatar3d.prior.text import (
    PAINTED_PNG,
    SUMMARY_JSON,
    match_attributes,
    painter_draws,
    run_text_to_avatar,
)
from avatar3d.prior.text_config import TextToAvatarConfig
from avatar3d.prompts import load_attributes, negative_prompt
from avatar3d.scene.avatar import render_avatar
from avatar3d.scene.cameras import camera_label
from tests import REPO

PRIOR = REPO / "tests" / "fixtures" / "formats" / "prior"
PROMPT = "A smiling woman with red-haired curls, Blue eyes, glasses and a pirate hat; no earrings"


def config(out, prompt=PROMPT, **kw):
    base = dict(prompt=prompt, output_dir=str(out), prior=str(PRIOR), resolution=32, views=4, turntable_frames=4,
                mesh_resolution=16, mesh_iso=0.0, seed=3, style="pixar", pipeline=PipelineConfig(preset="procedural"))
    return TextToAvatarConfig(**{**base, **kw})


# --------------------------------------------------------------------------- the attribute mapping


def test_prompt_phrases_map_onto_the_vocabulary_and_the_rest_is_reported():
    read = match_attributes(PROMPT)
    assert read.attributes == {"hair_color": "red hair", "expression": "smiling", "eye_color": "blue eyes",
                               "glasses": "wearing round glasses", "headwear": "wearing a wide-brimmed hat",
                               "earrings": "no earrings"}
    # Where in the prompt each came from (case and hyphens as the user wrote them).
    assert [(m.category, m.text) for m in read.matches] == [
        ("expression", "smiling"), ("hair_color", "red-haired"), ("eye_color", "Blue eyes"),
        ("glasses", "glasses"), ("headwear", "hat"), ("earrings", "no earrings")]
    assert read.unmapped == ["woman", "curls", "pirate"]


def test_every_vocabulary_value_maps_to_itself():
    for category in load_attributes():
        for value in category.values:
            read = match_attributes(value)
            assert read.attributes == {category.name: value} and read.unmapped == [], value


def test_longest_phrase_wins_and_a_second_value_is_reported_not_used():
    read = match_attributes("red hair and blonde hair, no glasses, pink hair")
    assert read.attributes == {"hair_color": "red hair", "glasses": "no glasses"}  # "no glasses" is not "glasses"
    assert [(m.value, m.text) for m in read.conflicts] == [("blonde hair", "blonde hair"), ("pink dyed hair", "pink hair")]
    assert match_attributes("a knight in shining armour").attributes == {}  # "armour" alone names nothing
    assert match_attributes("a knight in shining armour").unmapped == ["a knight in shining armour"[2:]]


def test_painter_draws_the_attributes_it_has_a_parameter_for():
    assert painter_draws("pixar", "hair_color", "red hair")
    assert painter_draws("pixar", "glasses", "wearing round glasses")
    assert not painter_draws("pixar", "expression", "smiling")
    assert not painter_draws("pixar", "eyebrows", "bushy eyebrows")


# --------------------------------------------------------------------------- the stage, procedural painter


@pytest.fixture(scope="module")
def avatar(tmp_path_factory):
    out = tmp_path_factory.mktemp("t2a") / "avatar"
    return run_text_to_avatar(config(out)), out


def test_painted_front_is_the_procedural_painters_render_of_the_mapped_attributes(avatar):
    result, out = avatar
    attrs = match_attributes(PROMPT).attributes
    truth = identity_for(3, 0, "pixar", attrs)
    assert result.identity == truth
    assert truth.glasses == "round" and truth.hat == "wide_brim" and not truth.earrings
    assert np.abs(np.subtract(truth.hair_colour, _HAIR_COLOURS["red"])).max() <= 0.04
    expected = render_avatar(truth, camera_label(0.0, 0.0), 32).image
    painted = np.asarray(Image.open(out / PAINTED_PNG).convert("RGB"))
    assert painted.shape == (32, 32, 3) and np.array_equal(painted, expected)
    # Not an attribute-blind render: the same seed without the prompt's attributes paints another avatar.
    assert not np.array_equal(painted, render_avatar(identity_for(3, 0, "pixar", {}), camera_label(0.0, 0.0), 32).image)


def test_output_folder_holds_painting_summary_views_turntable_and_mesh(avatar):
    result, out = avatar
    names = {p.name for p in out.iterdir()}
    views = {"view_yaw+0000.0.png", "view_yaw+0090.0.png", "view_yaw+0180.0.png", "view_yaw-0090.0.png"}
    assert names == {PAINTED_PNG, SUMMARY_JSON, "views.png", "turntable.gif", "w.npy", "mesh.ply", "avatar.json"} | views
    assert {p.name for p in result.views} == views and result.yaws == [0.0, 90.0, 180.0, -90.0]
    assert result.turntable == out / "turntable.gif" and result.mesh == out / "mesh.ply"
    assert result.painted_image == out / PAINTED_PNG and result.views_strip == out / "views.png"
    assert np.array_equal(np.load(out / "w.npy"), result.w) and result.w.shape == (8,)
    assert Image.open(out / "views.png").size == (4 * 32, 32)
    assert set(result.files) == {out / n for n in names}
    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert summary["painted_by"] == "procedural painter" and "no diffusion model" in summary["painter"]
    assert summary["prompt"] == PROMPT
    assert summary["front_prompt"] == ("Pixar-style 3D cartoon character, Disney animation render, a head-and-shoulders "
                                       "avatar of a person, front view, facing the camera, " + PROMPT)
    assert summary["negative_prompt"] == negative_prompt("front")
    assert summary["attributes"] == result.attributes == match_attributes(PROMPT).attributes
    assert summary["unmapped_phrases"] == ["woman", "curls", "pirate"]
    assert summary["not_painted_attributes"] == ["expression"]
    assert summary["painter_identity"]["glasses"] == "round"
    assert summary["camera"]["yaw"] == 0.0 and summary["outputs"]["mesh"] == str(out / "mesh.ply")


def test_a_used_output_folder_is_refused_unless_overwrite(avatar, tmp_path):
    _, out = avatar
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(ConfigError) as info:
        run_text_to_avatar(config(out))
    assert "already exists" in str(info.value) and "--overwrite" in str(info.value) and "\n" not in str(info.value)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError):
        run_text_to_avatar(config(other, turntable_frames=0, mesh_resolution=0))
    result = run_text_to_avatar(config(other, prompt="blue hair", turntable_frames=0, mesh_resolution=0,
                                       overwrite=True))
    assert (other / "notes.txt").read_text() == "mine" and result.attributes == {"hair_color": "blue dyed hair"}


def test_overwrite_leaves_no_file_of_the_earlier_avatar_behind(tmp_path):
    """Fewer views, no turntable, no mesh: the earlier avatar's extra views, GIF and mesh go (the folder would
    otherwise show a mix of two avatars); files that are not the avatar's stay."""
    first = run_text_to_avatar(config(tmp_path))
    assert len(first.views) == 4 and first.turntable is not None
    (tmp_path / "notes.txt").write_text("mine")
    second = run_text_to_avatar(config(tmp_path, views=2, turntable_frames=0, mesh_resolution=0, overwrite=True))
    assert sorted(p.name for p in tmp_path.glob("view_yaw*.png")) == sorted(p.name for p in second.views)
    assert len(second.views) == 2 and not (tmp_path / "turntable.gif").exists()
    assert not (tmp_path / "mesh.ply").exists() and (tmp_path / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- the command


def test_cli_runs_the_procedural_painter_with_overrides_on_either_side(tmp_path, capsys):
    out = tmp_path / "a"
    code = main(["text-to-avatar", "a person with blonde hair and a beard", "resolution=32", "--out", str(out),
                 "--prior", str(PRIOR), "pipeline.preset=procedural", "views=2", "turntable_frames=0",
                 "mesh_resolution=0", "style=anime"])
    assert code == 0
    text = capsys.readouterr().out
    assert "painted by: procedural painter" in text and "hair_color='blonde hair'" in text
    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert summary["style"] == "anime" and summary["attributes"] == {"hair_color": "blonde hair",
                                                                    "facial_hair": "full beard"}
    assert summary["unmapped_phrases"] == [] and summary["config"]["views"] == 2
    # Again into the same folder: one line, exit 2, unless --overwrite.
    argv = ["text-to-avatar", "x", "--out", str(out), "--prior", str(PRIOR), "pipeline.preset=procedural",
            "resolution=32", "views=1", "turntable_frames=0", "mesh_resolution=0"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avatar3d text-to-avatar: error: output_dir: ") and "--overwrite" in err
    assert "\n" not in err
    assert main(argv + ["--overwrite"]) == 0


@pytest.mark.parametrize("args, message", [
    (["", "--prior", str(PRIOR)], "prompt: empty"),
    (["x", "--prior", str(PRIOR), "style=pixxar"], "style: unknown style 'pixxar'; did you mean 'pixar'?"),
    (["x", "--prior", str(PRIOR), "resolution=60"], "resolution: 60 is not a multiple of 8"),
    (["x", "--prior", str(PRIOR), "pipeline.preset=dalle"], "pipeline.preset"),
    (["x"], "prior: pass a prior folder"),
    (["x", "--prior", str(PRIOR), "prompt=y"], "prompt: give it as PROMPT"),
    (["x", "--prior", str(PRIOR), "colour=red"], "unknown option 'colour'"),
    (["x", "--prior", "/nonexistent/prior", "pipeline.preset=procedural", "resolution=32"],
     "is not a prior folder"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["text-to-avatar", args[0], "--out", str(out), *args[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avatar3d text-to-avatar: error: ") and "\n" not in err and message in err, err
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_print_config_shows_the_resolved_options(capsys):
    assert main(["text-to-avatar", "red: hair", "--out", "o", "--prior", "p", "--print-config", "seed=4"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["prompt"] == "red: hair" and shown["seed"] == 4 and shown["pipeline"]["preset"] == "sd15"


# --------------------------------------------------------------------------- the ControlNet painter


def test_diffusion_painter_paints_the_front_prompt_from_the_front_guidance(tmp_path):
    """The tiny random-weights SD + ControlNet preset: the project's offline stand-in for SD 1.5."""
    from avatar3d.datagen.job import render_guidance_batch
    from avatar3d.datagen.pipeline import build_pipeline, generate_from_config

    pipeline = PipelineConfig(preset="tiny", device="cpu", steps=2)
    cfg = config(tmp_path / "sd", pipeline=pipeline, turntable_frames=0, mesh_resolution=0, views=2)
    result = run_text_to_avatar(cfg)
    out = tmp_path / "sd"
    assert result.painter == "diffusion model" and result.identity is None
    summary = json.loads((out / SUMMARY_JSON).read_text())
    assert summary["painted_by"] == "diffusion model" and "tiny random weights" in summary["painter"]
    assert summary["models"]["base_model"] == "avatar3d/tiny-random-sd" and summary["painted_attributes"] is None
    assert {"guidance_openpose.png", "guidance_depth.png", PAINTED_PNG} <= {p.name for p in out.iterdir()}
    # The same pixels as datagen's own painter given the front prompt and the front camera's guidance.
    label = camera_label(0.0, 0.0)
    batch = {"id": np.array(["f"]), "seed": np.array([3]), "prompt": np.array([result.front_prompt]),
             "negative_prompt": np.array([result.negative_prompt]), "camera": [label]}
    controls = render_guidance_batch(batch, 32, pipeline.controlnet_kinds)
    expected = generate_from_config(build_pipeline(pipeline), pipeline, [result.front_prompt],
                                    [result.negative_prompt],
                                    [list(controls[f"control_{k}"]) for k in pipeline.controlnet_kinds], [3], 32, 32)[0]
    assert np.array_equal(np.asarray(Image.open(out / PAINTED_PNG).convert("RGB")), expected)
    assert np.array_equal(np.asarray(Image.open(out / "guidance_depth.png").convert("RGB")), controls["control_depth"][0])


def test_help_is_light():
    code = ("import sys; from avatar3d.cli import main\n"
            "try: main(['text-to-avatar', '--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'ray') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
