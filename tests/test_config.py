"""Typed configs: YAML + overrides -> dataclasses, with one-line errors."""
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from avatar3d.config import CONFIG_DIR, INPUT, MODEL, ConfigError, describe, dump_config, load_config, to_dict


@dataclass
class Inner:
    steps: int = field(default=20, metadata={"min": 1, "max": 1000})
    scale: float = 7.5
    scheduler: Literal["unipc", "ddim"] = "unipc"


@dataclass
class Outer:
    name: str = "run"
    size: int = field(default=64, metadata={"multiple_of": 8, "help": "image size"})
    styles: list[str] = field(default_factory=lambda: ["anime", "clay"])
    box: tuple[float, float] = (2.0, 3.4)
    lora: Optional[str] = None
    flip: bool = True
    mode: str = field(default="coarse_to_fine", metadata={"choices": ["fine", "coarse", "coarse_to_fine"]})
    inner: Inner = field(default_factory=Inner)

    def validate(self):
        if self.box[0] >= self.box[1]:
            raise ConfigError(f"box: ray start {self.box[0]} must be below ray end {self.box[1]}")


def test_defaults_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("size: 128\ninner:\n  steps: 4\nstyles: [voxel]\n")
    cfg = load_config(Outer, path, ["inner.scale=3", "lora=/tmp/x", "flip=false", "box=[1.5, 3]"])
    assert cfg.size == 128 and cfg.inner.steps == 4 and cfg.inner.scale == 3.0
    assert isinstance(cfg.inner.scale, float)
    assert cfg.styles == ["voxel"] and cfg.lora == "/tmp/x" and cfg.flip is False
    assert cfg.box == (1.5, 3.0) and cfg.inner.scheduler == "unipc"
    assert load_config(Outer) == Outer()


def test_round_trip_through_dump(tmp_path):
    cfg = load_config(Outer, None, ["inner.steps=7", "mode=fine"])
    path = dump_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(Outer, path)
    assert again == cfg
    assert yaml.safe_load(path.read_text())["inner"]["steps"] == 7
    assert to_dict(cfg)["box"] == [2.0, 3.4]


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("sise=3", r"unknown option 'sise'; did you mean 'size'\?"),
        ("inner.stepz=3", r"unknown option 'inner.stepz'"),
        ("size=abc", r"size: expected an integer, got 'abc'"),
        ("size=60", r"size: 60 must be a multiple of 8"),
        ("inner.steps=0", r"inner.steps: 0 is out of range; pass a value >= 1"),
        ("inner.scheduler=euler", r"inner.scheduler: 'euler' is not allowed; choose one of 'unipc', 'ddim'"),
        ("mode=both", r"mode: 'both' is not allowed; choose one of fine, coarse, coarse_to_fine"),
        ("flip=maybe", r"flip: expected true or false"),
        ("box=[1]", r"box: expected 2 values, got 1"),
        ("box=[3, 2]", r"box: ray start 3.0 must be below ray end 2.0"),
        ("inner=5", r"inner: expected a mapping"),
        ("noequals", r"not of the form key=value"),
    ],
)
def test_bad_values_name_the_field(override, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(Outer, None, [override])
    assert "\n" not in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("size: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(Outer, bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(Outer, listy)


def test_describe_lists_nested_options():
    rows = {name: (tp, default, help_) for name, tp, default, help_ in describe(Outer)}
    assert rows["size"] == ("int", 64, "image size")
    assert rows["inner.steps"][1] == 20
    assert rows["inner.scheduler"][0] == "{unipc,ddim}"


@dataclass
class _Inner:
    name: str = "class default"
    size: int = 1


@dataclass
class _Outer:
    inner: _Inner = field(default_factory=lambda: _Inner(name="parent default", size=2))


def test_a_partial_nested_mapping_keeps_the_parents_defaults():
    cfg = load_config(_Outer, None, ["inner.size=5"])
    assert cfg.inner == _Inner(name="parent default", size=5)
    assert load_config(_Outer).inner == _Inner(name="parent default", size=2)
    assert [row[2] for row in describe(_Outer)] == ["parent default", 2]  # --help shows the parent's too


def test_stage_tracking_defaults_survive_a_partial_override():
    from avatar3d.training.config import TrainGANConfig

    cfg = load_config(TrainGANConfig, None, ["tracking.register_name=mine"])
    assert (cfg.tracking.experiment, cfg.tracking.register_name) == ("avatar3d-gan", "mine")


@pytest.mark.parametrize("text, value", [("1e-4", 1e-4), ("2.5E3", 2500.0), (" 3 ", 3.0)])
def test_numbers_in_scientific_notation_are_numbers(text, value):
    from avatar3d.prior.config import TrainPriorConfig

    assert load_config(TrainPriorConfig, None, [f"lr={text}", "pairs=x"]).lr == value


@pytest.mark.parametrize("text, message", [("abc", "expected a number, got 'abc'"), ("nan", "expected a finite number"),
                                           ("inf", "expected a finite number")])
def test_non_numbers_are_still_refused(text, message):
    from avatar3d.prior.config import TrainPriorConfig

    with pytest.raises(ConfigError, match=message):
        load_config(TrainPriorConfig, None, [f"lr={text}", "pairs=x"])


@pytest.mark.parametrize("name", ["o'brien", "..", "", "a/b", "-x", "x" * 101])
def test_run_names_that_would_break_a_folder_or_an_mlflow_filter_are_refused(name):
    from avatar3d.prior.config import TrainPriorConfig
    from avatar3d.training.config import TrainGANConfig

    for cls, extra in ((TrainGANConfig, []), (TrainPriorConfig, ["pairs=x"])):
        with pytest.raises(ConfigError, match=r"^run_name=.*: use letters, digits"):
            load_config(cls, None, [f"run_name={name}", *extra])


def test_an_empty_output_folder_is_refused_not_taken_as_the_current_one(tmp_path):
    from avatar3d.config import writable_dir

    for create in (True, False):
        with pytest.raises(ConfigError, match="output_dir is empty: pass the folder"):
            writable_dir(" ", "output_dir", create=create)
    assert writable_dir(tmp_path / "new", "output_dir") == tmp_path / "new" and (tmp_path / "new").is_dir()


@dataclass
class Data:
    path: str = field(default="", metadata={"path": INPUT})


@dataclass
class Paths:
    data: Data = field(default_factory=Data)
    snapshot: str = field(default="", metadata={"path": INPUT})
    model: str = field(default="org/name", metadata={"path": MODEL})
    output_dir: str = "outputs/run"
    config_dir: str = field(default="", metadata={"path": CONFIG_DIR})


def test_relative_input_paths_in_a_file_are_read_from_its_folder(tmp_path, monkeypatch):
    conf = tmp_path / "configs"
    (conf / "local-model").mkdir(parents=True)
    (conf / "c.yaml").write_text("data: {path: ../ds}\nsnapshot: snaps/g.safetensors\nmodel: local-model\n"
                                 "output_dir: outs\n")
    monkeypatch.chdir(tmp_path / "configs" / "local-model")  # anywhere but the file's folder
    cfg = load_config(Paths, conf / "c.yaml")
    assert cfg.data.path == str(tmp_path / "ds") and cfg.snapshot == str(conf / "snaps" / "g.safetensors")
    assert cfg.model == str(conf / "local-model")  # a folder beside the file: that folder
    assert cfg.output_dir == "outs" and cfg.config_dir == str(conf)  # outputs: the current folder's


@pytest.mark.parametrize("value", ["org/name", "models:/gan@champion", "s3://bucket/ds", "/abs/ds", ""])
def test_hub_ids_uris_and_absolute_paths_are_left_alone(tmp_path, value):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model": value, "snapshot": value}))
    cfg = load_config(Paths, tmp_path / "c.yaml")
    assert cfg.model == value
    assert cfg.snapshot == (value if value != "org/name" else str(tmp_path / "org" / "name"))


def test_command_line_paths_stay_relative_to_the_current_folder_unless_a_base_is_given(tmp_path):
    (tmp_path / "c.yaml").write_text("snapshot: a.safetensors\n")
    cfg = load_config(Paths, tmp_path / "c.yaml", ["snapshot=b.safetensors", "data.path=ds"])
    assert cfg.snapshot == "b.safetensors" and cfg.data.path == "ds"
    based = load_config(Paths, None, ["snapshot=b.safetensors", "data.path=ds", "output_dir=o"], base_dir=tmp_path)
    assert based.snapshot == str(tmp_path / "b.safetensors") and based.data.path == str(tmp_path / "ds")
    assert based.output_dir == "o" and based.config_dir == ""


def test_a_dumped_config_reloads_to_the_same_paths_from_its_new_folder(tmp_path):
    (tmp_path / "c.yaml").write_text("snapshot: g.safetensors\n")
    cfg = load_config(Paths, tmp_path / "c.yaml")
    dumped = dump_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(Paths, dumped) == cfg  # resolved paths are absolute: a dump reads the same anywhere


def test_literal_choice_spelled_like_a_yaml_boolean(tmp_path):
    """``mixed_precision=no`` (the spelling the LoRA trainer's own error asks for) reaches YAML as False;
    a Literal that holds exactly one such spelling takes it back, from overrides and from files alike."""
    from avatar3d.lora.config import LoraTrainConfig

    cfg = load_config(LoraTrainConfig, None, ["mixed_precision=no", "images=/tmp", "token=<c>"])
    assert cfg.mixed_precision == "no"
    path = tmp_path / "lora.yaml"
    path.write_text("mixed_precision: no\nimages: /tmp\ntoken: <c>\n")
    assert load_config(LoraTrainConfig, path, []).mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision: True is not allowed"):
        load_config(LoraTrainConfig, None, ["mixed_precision=yes", "images=/tmp", "token=<c>"])
    with pytest.raises(ConfigError, match="inner.scheduler: False is not allowed"):
        load_config(Outer, None, ["inner.scheduler=no"])
