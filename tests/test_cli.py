"""The avatar3d command: help everywhere, one-line errors with exit status 2."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests import CONFIGS
from avatar3d.cli import build_parser, main


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_top_level_help_lists_the_stages(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in ("guidance", "prompts", "generate", "train-gan", "run-pipeline"):
        assert name in out


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: avatar3d " + command in capsys.readouterr().out


@pytest.mark.parametrize("command, lines", [
    ("generate", ["num_samples", "images in the dataset (N) [int; 16]", "procedural.back_janus_rate",
                  'tracking.experiment', '"avatar3d-datagen"']),
    ("train-gan", ["data.path", "tracking.experiment", '[str; "avatar3d-gan"]', "truth.num_avatars", "[int; 32]"]),
    ("train-prior", ["model.prediction_type", '[str; "avatar3d-prior"]']),
    ("build-prior-pairs", ["num_pairs", "[int; 256]"]),
    ("lora-train", ["rank", "LoRA rank r [int; 8]", '[str; "avatar3d-lora"]']),
    ("run-pipeline", ["from_stage", "train_overrides", "[list[str]; []]"]),
])
def test_config_driven_help_lists_every_option_with_its_default(command, lines, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    listing = out[out.index("config options"):]
    for text in lines:
        assert text in listing, (command, text)


def test_quiet_and_verbose_set_one_level_for_the_avatar3d_logger(monkeypatch, capsys):
    import logging

    from avatar3d.logs import LEVEL_ENV

    monkeypatch.delenv(LEVEL_ENV, raising=False)
    log = logging.getLogger("avatar3d.some.stage")
    assert main(["-q", "prompts", "--n", "1"]) == 0
    log.info("progress line")
    log.warning("a warning")
    err = capsys.readouterr().err
    assert "progress line" not in err and "] WARNING: a warning" in err
    assert main(["prompts", "--n", "1"]) == 0  # the exported level stays for this process's workers
    assert logging.getLogger("avatar3d").level == logging.WARNING
    monkeypatch.delenv(LEVEL_ENV)
    assert main(["-v", "prompts", "--n", "1"]) == 0
    log.debug("details")
    assert "details" in capsys.readouterr().err
    monkeypatch.setenv(LEVEL_ENV, "LOUD")
    assert main(["prompts", "--n", "1"]) == 2
    assert "log level 'LOUD' is not known" in capsys.readouterr().err


@pytest.mark.parametrize("argv, pattern", [
    (["prompts", "--n", "0"], "avatar3d prompts: error: --n: 0 is out of range; pass 1..10,000,000"),
    (["generate", "--config", str(CONFIGS / "generate_tiny.yaml"), "num_sampels=3"],
     "avatar3d generate: error: unknown option 'num_sampels'; did you mean 'num_samples'?"),
    (["train-gan", "--config", str(CONFIGS / "train_gan_tiny.yaml"), "batch_size=many"],
     "avatar3d train-gan: error: batch_size: expected an integer, got 'many'"),
    (["train-gan", "--config", str(CONFIGS / "nope.yaml")], "avatar3d train-gan: error: config file not found"),
    (["guidance", "--out", "/proc/avatar3d-test", "--views", "1", "--size", "16"],
     "avatar3d guidance: error: --out: cannot create folder"),
])
def test_user_mistakes_are_one_line_and_exit_2(argv, pattern, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(pattern) and err.count("\n") == 1 and "Traceback" not in err


def test_prompts_json_is_deterministic(capsys):
    assert main(["prompts", "--n", "3", "--seed", "7", "--json"]) == 0
    first = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["prompts", "--n", "3", "--seed", "7", "--json"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == first
    assert len(first) == 3 and {"prompt", "negative_prompt", "style", "view", "attributes"} <= set(first[0])


def test_print_config_resolves_overrides(capsys):
    assert main(["train-gan", "--config", str(CONFIGS / "train_gan_tiny.yaml"), "--print-config",
                 "model.overrides.d_mode=coarse", "scaling.num_workers=2"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["model"]["overrides"] == {"d_mode": "coarse"} and cfg["scaling"]["num_workers"] == 2


def test_console_script_and_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "avatar3d", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("avatar3d ")


JOBS = Path(__file__).resolve().parents[1] / "jobs"


@pytest.mark.parametrize("script", sorted(p.name for p in JOBS.glob("*.py")))
def test_every_job_entrypoint_runs_its_subcommand(script):
    """`ray job submit -- python jobs/<stage>.py` reaches the CLI's parser for that stage."""
    done = subprocess.run([sys.executable, str(JOBS / script), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]
    assert done.stdout.startswith("usage: avatar3d ")


def test_prompts_stream_in_chunks_equal_to_one_list(monkeypatch, capsys):
    import avatar3d.cli as cli
    from avatar3d.prompts import sample_prompts

    monkeypatch.setattr(cli, "PROMPT_CHUNK", 3)  # 7 prompts in chunks of 3, 3, 1
    assert main(["prompts", "--n", "7", "--seed", "5", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [s.to_dict() for s in sample_prompts(7, 5)]


@pytest.mark.parametrize("argv, message", [
    (["prompts", "--seed", "-1"], "--seed: -1 is out of range; pass 0..4294967295"),
    (["guidance", "--views", "1000000000000", "--out", "x"], "--views: 1000000000000 is out of range; pass 1..360"),
])
def test_sizes_and_seeds_that_cannot_work_are_refused_at_once(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert list(tmp_path.iterdir()) == []


class _Built(Exception):
    """Stops a command once its flags have become a config (nothing is loaded or written)."""


# Every command whose flags map onto a config class's fields, with the least it needs to get that far.
FLAG_COMMANDS = {
    "fid": ["--model", "m.safetensors", "--data", "ds"],
    "truth-metrics": ["--model", "m.safetensors", "--data", "ds"],
    "walk": ["--model", "m.safetensors", "--out", "walk"],
    "turntable": ["--model", "m.safetensors", "--out", "turntable"],
    "export-mesh": ["--model", "m.safetensors", "--out", "avatar.glb"],
    "image-to-avatar": ["face.png", "--prior", "prior", "--out", "avatar"],
}
GIVEN = {"image", "prior", "output_dir"}  # image-to-avatar's fields set by the arguments above


def test_flag_defaults_are_the_config_classes_defaults(monkeypatch, tmp_path):
    """README: "a flag's default is read from its config class, so every default lives in one place". Each
    command is run with its flags left at their defaults and stopped where they become the stage's option
    object: every field a flag sets equals that field's default in the config class (also where the flag is
    converted on the way, e.g. --formats gif,mp4 -> ["gif", "mp4"], --no-per-view -> per_view)."""
    import dataclasses

    import avatar3d.cli.common as common
    import avatar3d.cli.evaluation as evaluation
    import avatar3d.cli.prior as prior
    from avatar3d.prior.text_config import TextToAvatarConfig

    built = []

    def capture(cls, data, flags=None):
        built.append((cls, data, common.from_flags(cls, data, flags)))
        raise _Built

    monkeypatch.setattr(evaluation, "from_flags", capture)
    monkeypatch.setattr(prior, "from_flags", capture)
    monkeypatch.chdir(tmp_path)
    compared = {}
    for command, argv in FLAG_COMMANDS.items():
        with pytest.raises(_Built):
            main([command, *argv])
        cls, data, cfg = built.pop()
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(data) <= fields, f"{command}: flags set {sorted(set(data) - fields)}, not options of {cls.__name__}"
        for name in sorted(set(data) - GIVEN):
            assert getattr(cfg, name) == common.default(cls, name), (
                f"avatar3d {command}: the flag for {cls.__name__}.{name} defaults to {getattr(cfg, name)!r}, "
                f"the config class to {common.default(cls, name)!r}")
        compared[command] = sorted(set(data) - GIVEN)
    assert sum(map(len, compared.values())) >= 35, compared  # every flag-driven option, not a handful
    assert {"num_fakes", "extractor", "frechet", "per_view"} <= set(compared["fid"])
    assert {"seeds", "formats"} <= set(compared["walk"]) and "turntable_frames" in compared["image-to-avatar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # stopped before anything was written
    # text-to-avatar's only option flag (the rest are key=value overrides of its config): --overwrite off
    assert common.default(TextToAvatarConfig, "overwrite") is False


def test_avatar3d_debug_shows_the_traceback_of_a_mistake(tmp_path):
    """README: a mistake prints one line and exits 2 "(AVATAR3D_DEBUG=1 shows the traceback)": with it the
    traceback comes first, then the same one line and the same status (it used to re-raise and exit 1)."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "AVATAR3D_DEBUG"}
    argv = [sys.executable, "-m", "avatar3d", "prompts", "--n", "0"]
    plain = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    message = "--n: 0 is out of range; pass 1..10,000,000"
    assert plain.returncode == 2 and plain.stderr.startswith(f"avatar3d prompts: error: {message}")
    assert "Traceback" not in plain.stderr
    debug = subprocess.run(argv, cwd=tmp_path, env={**env, "AVATAR3D_DEBUG": "1"}, capture_output=True, text=True,
                           timeout=120)
    assert debug.returncode == 2 and debug.stdout == ""
    assert debug.stderr.startswith("Traceback (most recent call last):")
    assert 'avatar3d/cli/__init__.py", line' in debug.stderr and "in _run_prompts" in debug.stderr
    *trace, last = debug.stderr.strip().splitlines()
    assert trace[-1] == f"avatar3d.config.ConfigError: {message} (20x the paper's dataset)"
    assert last.startswith(f"avatar3d prompts: error: {message}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_fresh_cli_process_prints_no_hub_progress_bars(tmp_path):
    """The CLI quiets the hub's per-file bars for its own process (HF_HUB_DISABLE_PROGRESS_BARS, before any
    import; the library itself leaves the setting alone): loading a prior's CLIP tower printed "Loading
    weights" bars above a refusal's one line. A user's own value still wins."""
    import os
    import shutil

    formats = Path(__file__).resolve().parent / "fixtures" / "formats"
    shutil.copytree(formats / "prior", tmp_path / "prior")
    (tmp_path / "garbage.safetensors").write_bytes(bytes(range(256)) * 8)
    Image.new("RGB", (32, 32), (200, 80, 40)).save(tmp_path / "in.png")
    argv = [sys.executable, "-m", "avatar3d", "image-to-avatar", str(tmp_path / "in.png"), "--out",
            str(tmp_path / "out"), "--prior", str(tmp_path / "prior"),
            "--generator", str(tmp_path / "garbage.safetensors")]
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    quiet = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 2 and len(quiet.stderr.strip().splitlines()) == 1, quiet.stderr
    assert "garbage.safetensors is not a readable safetensors file" in quiet.stderr
    loud = subprocess.run(argv, env={**env, "HF_HUB_DISABLE_PROGRESS_BARS": "0"}, capture_output=True, text=True,
                          timeout=300)
    assert loud.returncode == 2 and "Loading weights" in loud.stderr
