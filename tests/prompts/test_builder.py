"""Prompt stage: data files, view-aware prompts, reproducible and resumable prompt sets."""
import collections
import importlib.util
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from avatar3d.prompts import (
    BACK_NEGATIVE,
    BASE_NEGATIVE,
    SIDE_NEGATIVE,
    AttributeCategory,
    Style,
    build_prompt,
    format_prompt_table,
    load_attributes,
    load_styles,
    negative_prompt,
    prompts_report,
    sample_attributes,
    sample_prompts,
    view_phrase,
)
from avatar3d.scene.cameras import CameraSampler
from avatar3d.scene.pose_bins import view_group


def _items(negative: str) -> set[str]:
    return {part.strip() for part in negative.split(",")}


# --------------------------------------------------------------------------- data files


def test_builtin_styles_are_50_with_unique_snake_case_ids():
    styles = load_styles()
    assert len(styles) == 50
    assert len({s.name for s in styles}) == 50
    assert len({s.text.lower() for s in styles}) == 50
    assert all(s.name.replace("_", "").isalnum() and s.name == s.name.lower() for s in styles)
    assert all(s.text.strip() == s.text and s.text for s in styles)


def test_builtin_attributes_are_20_categories_with_enough_values():
    categories = load_attributes()
    assert len(categories) == 20
    assert len({c.name for c in categories}) == 20
    assert all(len(c.values) >= 4 and len(set(c.values)) == len(c.values) for c in categories)
    by_name = {c.name: c for c in categories}
    # What cannot be seen from behind must be marked so, what can must not.
    for hidden in ("expression", "eye_shape", "eye_color", "glasses", "nose", "lips", "makeup", "freckles"):
        assert by_name[hidden].visible_from_back is False, hidden
    for shown in ("hairstyle", "hair_color", "headwear"):
        assert by_name[shown].visible_from_back is True, shown
    assert sum(c.visible_from_back for c in categories) >= 5  # a back view can still get k=5


def test_worst_case_prompt_fits_clip_context():
    """The longest possible prompt (longest style, view part and attribute values)
    must fit CLIP's 77 tokens (75 + BOS/EOS), or SD silently drops its tail."""
    path = Path(sysconfig.get_paths()["purelib"]) / "clip" / "simple_tokenizer.py"
    if not path.is_file():
        pytest.skip("openai-clip's BPE tokenizer is not installed")
    spec = importlib.util.spec_from_file_location("_clip_simple_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tokenizer = module.SimpleTokenizer()

    def n_tokens(text):
        return len(tokenizer.encode(text))

    style = max(load_styles(), key=lambda s: n_tokens(s.text))
    longest_values = sorted((max(c.values, key=n_tokens) for c in load_attributes()), key=n_tokens)[-5:]
    worst = build_prompt(style, -100.0, 29.0, {f"c{i}": v for i, v in enumerate(longest_values)})
    assert n_tokens(worst.prompt) <= 75, worst.prompt
    assert n_tokens(negative_prompt("back")) <= 75
    assert n_tokens(negative_prompt("side")) <= 75


# --------------------------------------------------------------------------- view part and negatives


@pytest.mark.parametrize("yaw,expected", [(0.0, "front view"), (44.0, "front view"), (90.0, "side view"),
                                          (-90.0, "side view"), (180.0, "back of the head"),
                                          (-150.0, "back of the head"), (530.0, "back of the head")])
def test_view_phrase_follows_view_group(yaw, expected):
    phrase = view_phrase(yaw, 0.0)
    assert phrase.startswith(expected)
    assert "seen from" not in phrase


def test_side_views_name_the_image_direction_of_the_face():
    # yaw +90: camera on the subject's left, the face points to image-left.
    assert "facing left" in view_phrase(90.0, 0.0)
    assert "facing right" in view_phrase(-90.0, 0.0)


def test_steep_pitch_adds_above_or_below():
    assert view_phrase(0.0, 20.0).endswith("seen from above")
    assert view_phrase(180.0, -20.0).endswith("seen from below")
    assert "seen from" not in view_phrase(0.0, 14.0)
    assert "seen from" not in view_phrase(0.0, -14.0)


def test_negative_prompt_names_face_parts_only_where_they_cannot_be_seen():
    front, side, back = (_items(negative_prompt(v)) for v in ("front", "side", "back"))
    assert set(BASE_NEGATIVE) <= front and set(BASE_NEGATIVE) <= side and set(BASE_NEGATIVE) <= back
    assert {"face", "eyes", "nose", "mouth"} <= back
    assert not (set(BACK_NEGATIVE) | set(SIDE_NEGATIVE)) & front
    assert set(SIDE_NEGATIVE) <= side and not set(BACK_NEGATIVE) & side


def test_sampled_back_negatives_have_face_parts_and_front_ones_do_not():
    samples = sample_prompts(200, seed=3)
    views = collections.Counter(s.view for s in samples)
    assert views["front"] > 20 and views["back"] > 20 and views["side"] > 20
    for s in samples:
        assert s.view == view_group(s.yaw)
        has_face_parts = set(BACK_NEGATIVE) <= _items(s.negative_prompt)
        assert has_face_parts == (s.view == "back"), (s.view, s.negative_prompt)


def test_build_prompt_order_and_determinism():
    style = Style("bronze_statue", "bronze statue, polished metal sculpture")
    attrs = {"hairstyle": "buzz cut", "glasses": "wearing round glasses"}
    p = build_prompt(style, 10.0, 0.0, attrs)
    assert p == build_prompt(style, 10.0, 0.0, attrs)
    assert p.style == "bronze_statue" and p.view == "front" and p.attributes == attrs
    # style part, subject, view part, attribute part -- in that order.
    positions = [p.prompt.index(x) for x in ("bronze statue", "avatar of a person", "front view",
                                            "buzz cut", "wearing round glasses")]
    assert positions == sorted(positions)
    assert p.negative_prompt == negative_prompt("front")


# --------------------------------------------------------------------------- attributes


def test_sample_attributes_front_gives_k_distinct_categories():
    categories = load_attributes()
    rng = np.random.default_rng(0)
    names = [c.name for c in categories]
    for _ in range(50):
        attrs = sample_attributes(rng, categories, k=5, view="front")
        assert len(attrs) == 5
        assert all(v in categories[names.index(k)].values for k, v in attrs.items())
        # File order, so the attribute part always reads the same way.
        assert [names.index(k) for k in attrs] == sorted(names.index(k) for k in attrs)


def test_sample_attributes_back_uses_only_visible_categories():
    categories = load_attributes()
    visible = {c.name for c in categories if c.visible_from_back}
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(100):
        attrs = sample_attributes(rng, categories, k=5, view="back")
        assert len(attrs) == 5 and set(attrs) <= visible
        seen |= set(attrs)
    assert seen == visible  # every visible category gets used eventually


def test_sample_attributes_back_with_too_few_visible_uses_all_visible():
    categories = [AttributeCategory(f"cat_{i}", ("a", "b", "c", "d"), visible_from_back=i < 2) for i in range(6)]
    attrs = sample_attributes(np.random.default_rng(0), categories, k=5, view="back")
    assert set(attrs) == {"cat_0", "cat_1"}


def test_prompt_sets_respect_k_and_never_repeat_a_category():
    visible = {c.name for c in load_attributes() if c.visible_from_back}
    for s in sample_prompts(150, seed=11, k=5):
        assert len(s.attributes) == 5  # 9 categories are visible from behind, so back views get 5 too
        if s.view == "back":
            assert set(s.attributes) <= visible
        for value in s.attributes.values():
            assert s.prompt.count(value) >= 1
    for s in sample_prompts(10, seed=11, k=0):
        assert s.attributes == {}


# --------------------------------------------------------------------------- prompt sets


def test_same_seed_same_prompts_different_seed_differs():
    a, b = sample_prompts(20, seed=7), sample_prompts(20, seed=7)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    c = sample_prompts(20, seed=8)
    assert [s.prompt for s in a] != [s.prompt for s in c]
    assert [s.yaw for s in a] != [s.yaw for s in c]
    assert len({s.seed for s in a + c}) == 40  # per-sample seeds are distinct


def test_sample_i_does_not_depend_on_n_or_start():
    short, long = sample_prompts(5, seed=0), sample_prompts(50, seed=0)
    assert [s.to_dict() for s in short] == [s.to_dict() for s in long[:5]]
    # Resuming / extending a set: samples 30..49 drawn on their own match.
    tail = sample_prompts(20, seed=0, start=30)
    assert [s.index for s in tail] == list(range(30, 50))
    assert [s.to_dict() for s in tail] == [s.to_dict() for s in long[30:]]


def test_changing_k_keeps_camera_seed_and_style():
    k5, k3 = sample_prompts(10, seed=4, k=5), sample_prompts(10, seed=4, k=3)
    for a, b in zip(k5, k3):
        assert (a.seed, a.yaw, a.pitch, a.style) == (b.seed, b.yaw, b.pitch, b.style)
        assert len(b.attributes) == 3


def test_even_style_coverage():
    samples = sample_prompts(123, seed=5)
    counts = collections.Counter(s.style for s in samples)
    assert len(counts) == 50
    assert max(counts.values()) - min(counts.values()) <= 1
    assert [s.style for s in samples[:50]] == [s.name for s in load_styles()]


def test_camera_sampler_ranges_are_used():
    sampler = CameraSampler(yaw_range=(150.0, 170.0), pitch_range=(20.0, 25.0))
    samples = sample_prompts(30, seed=2, camera_sampler=sampler)
    assert all(150.0 <= s.yaw <= 170.0 and 20.0 <= s.pitch <= 25.0 for s in samples)
    assert all(s.view == "back" and "seen from above" in s.prompt for s in samples)
    default = sample_prompts(400, seed=2)
    yaws = np.array([s.yaw for s in default])
    pitches = np.array([s.pitch for s in default])
    assert yaws.min() >= -180 and yaws.max() <= 180 and yaws.min() < -150 and yaws.max() > 150
    assert pitches.min() >= -30 and pitches.max() <= 30


# --------------------------------------------------------------------------- user styles


def test_user_styles_from_list_txt_and_yaml(tmp_path):
    from_list = load_styles(["Neon Graffiti", "sand sculpture on a beach"])
    assert [s.name for s in from_list] == ["neon_graffiti", "sand_sculpture_on_a_beach"]
    assert [s.text for s in from_list] == ["Neon Graffiti", "sand sculpture on a beach"]

    txt = tmp_path / "my_styles.txt"
    txt.write_text("# my styles\nNeon Graffiti\n\n  sand sculpture on a beach  \n", encoding="utf-8")
    assert load_styles(txt) == from_list
    assert load_styles(str(txt)) == from_list

    yml = tmp_path / "my_styles.yaml"
    yml.write_text("styles:\n  - {name: graffiti, text: neon graffiti}\n  - sand sculpture\n", encoding="utf-8")
    assert load_styles(yml) == [Style("graffiti", "neon graffiti"), Style("sand_sculpture", "sand sculpture")]

    samples = sample_prompts(4, seed=0, styles=txt)
    assert [s.style for s in samples] == ["neon_graffiti", "sand_sculpture_on_a_beach"] * 2
    assert samples[0].prompt.startswith("Neon Graffiti, ")
    assert samples[1].prompt.startswith("sand sculpture on a beach, ")


@pytest.mark.parametrize("bad", [[], ["clay", "clay"], ["Clay figure", "clay figure"], [{"name": "Bad Name",
                                 "text": "x"}], ["ok", 3], 42])
def test_bad_styles_raise_value_error_naming_the_field(bad):
    with pytest.raises(ValueError, match=r"^styles: "):
        load_styles(bad)


def test_bad_style_files_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match=r"^styles: file not found"):
        load_styles(tmp_path / "missing.txt")
    other = tmp_path / "styles.csv"
    other.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^styles: unsupported file type"):
        load_styles(other)
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^styles: .* is empty"):
        load_styles(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("styles: [unclosed\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^styles: cannot parse YAML"):
        load_styles(broken)


def test_user_attributes_file_and_bad_attributes(tmp_path):
    good = tmp_path / "attrs.yaml"
    good.write_text("categories:\n  - {name: hat, values: [a cap, a crown], visible_from_back: true}\n",
                    encoding="utf-8")
    assert load_attributes(good) == [AttributeCategory("hat", ("a cap", "a crown"), True)]
    cases = {
        "no_back.yaml": "categories:\n  - {name: hat, values: [a cap]}\n",
        "dupe.yaml": "categories:\n  - {name: hat, values: [a], visible_from_back: true}\n"
                     "  - {name: hat, values: [b], visible_from_back: true}\n",
        "empty_values.yaml": "categories:\n  - {name: hat, values: [], visible_from_back: true}\n",
        "none.yaml": "categories: []\n",
    }
    for filename, text in cases.items():
        path = tmp_path / filename
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=r"^attributes: "):
            load_attributes(path)
    with pytest.raises(ValueError, match=r"^attributes: file not found"):
        load_attributes(tmp_path / "missing.yaml")


@pytest.mark.parametrize("kwargs,field", [({"n": -1, "seed": 0}, "n"), ({"n": 2, "seed": -3}, "seed"),
                                          ({"n": 2, "seed": 1.5}, "seed"), ({"n": 2, "seed": 0, "k": 21}, "k"),
                                          ({"n": 2, "seed": 0, "start": -1}, "start")])
def test_bad_sampling_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        sample_prompts(**kwargs)


def test_bad_view_and_angles_name_the_field():
    with pytest.raises(ValueError, match=r"^view: "):
        negative_prompt("top")
    with pytest.raises(ValueError, match=r"^view: "):
        sample_attributes(np.random.default_rng(0), load_attributes(), view="frontal")
    with pytest.raises(ValueError, match=r"^yaw: "):
        view_phrase(float("nan"), 0.0)
    with pytest.raises(ValueError, match=r"^pitch: "):
        build_prompt("clay", 0.0, "up", {})


# --------------------------------------------------------------------------- display


def test_table_and_json_output():
    samples = sample_prompts(60, seed=0)
    table = format_prompt_table(samples, width=80)
    assert all(len(line) <= 80 for line in table.splitlines())
    blocks = table.split("\n\n")
    assert len(blocks) == len(samples)
    for s, block in zip(samples, blocks):
        assert block.startswith(f"#{s.index}  style={s.style}  view={s.view}")
        for piece in (f"yaw={s.yaw:+.2f}", f"pitch={s.pitch:+.2f}", f"seed={s.seed}"):
            assert piece in block
        # Unwrapping the block gives back the full prompt and negative prompt.
        flat = " ".join(block.split())
        assert s.prompt in flat and s.negative_prompt in flat
    samples = sample_prompts(3, seed=0)
    rows = json.loads(prompts_report(3, 0, as_json=True))
    assert rows == [s.to_dict() for s in samples]
    assert set(rows[0]) == {"index", "seed", "style", "view", "yaw", "pitch", "prompt", "negative_prompt",
                            "attributes"}
