"""The procedural painter (avatar3d.datagen.procedural): identities, the failure model, and the real job.

The failure-model tests plan thousands of specs without rendering (~0.3 ms
each). The job tests run ``pipeline.preset=procedural`` through the real Ray
Data job on a local 2-CPU Ray (one module-scoped 12-row reference dataset at
32 px, seed 1, high back-view failure rates so that all four failure kinds
occur), then compare re-runs, a resumed crash and the truth columns with it.
"""
import dataclasses
import json
import os
import re

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from avatar3d.config import ConfigError, load_config  # noqa: E402
from avatar3d.datagen.dataset import decode_png, open_dataset  # noqa: E402
from avatar3d.datagen.job import GenerateConfig, run_generation  # noqa: E402
from avatar3d.datagen.procedural import (  # noqa: E402
    FAILURES,
    PAINTER_ID,
    ProceduralOptions,
    ProceduralPainter,
    decode_mask,
    encode_mask,
    identity_for,
    paint,
    plan_paint,
    repaint,
)
from avatar3d.datagen.shards import list_shards, read_dataset  # noqa: E402
from avatar3d.datagen.schema import FORMAT_KEY, FORMAT_VERSION, ROW_SCHEMA, TRUTH_COLUMNS, format_version  # noqa: E402
from avatar3d.scene.avatar import AvatarIdentity  # noqa: E402
from avatar3d.scene.cameras import camera_label, label_to_yaw_pitch, wrap_degrees  # noqa: E402
from avatar3d.scene.pose_bins import view_group  # noqa: E402

TINY_YAML = os.path.join(os.path.dirname(__file__), "..", "..", "jobs", "configs", "generate_tiny.yaml")
N = 12
JOB_OVERRIDES = [
    f"num_samples={N}", "resolution=32", "pipeline.preset=procedural", "styles=[pixar,anime,bronze_statue]",
    "tracking.enabled=false", "rows_per_file=4", "batch_size=4", "seed=1",
    # Seed 1 with these rates paints all four failure kinds in 12 rows (checked in test_truth_columns...).
    "procedural.back_janus_rate=0.4", "procedural.back_flip_rate=0.4",
]


# ============================================================== attributes -> identity


def test_identity_is_a_function_of_seed_and_index():
    a = identity_for(7, 3, "pixar", {})
    assert a == identity_for(7, 3, "pixar", {}) and a.to_json() == identity_for(7, 3, "pixar", {}).to_json()
    others = [identity_for(7, i, "pixar", {}) for i in range(4, 12)] + [identity_for(8, 3, "pixar", {})]
    assert all(o != a for o in others)
    assert len({o.head_width for o in others} | {a.head_width}) == len(others) + 1
    # Drawn parameters stay inside their ranges over many identities.
    ids = [identity_for(0, i, "pixar", {}) for i in range(200)]
    widths = np.array([i.head_width for i in ids])
    assert widths.min() >= 0.92 and widths.max() <= 1.08 and widths.std() > 0.03
    assert len({i.hair for i in ids}) >= 10  # most of the 12 hairstyles turn up
    assert 0.55 < np.mean([i.glasses == "none" for i in ids]) < 0.85  # p = 0.7


def test_style_sets_family_and_statue_colour():
    assert identity_for(0, 0, "anime", {}).family == "cel"
    bronze = identity_for(0, 0, "bronze_statue", {})
    assert bronze.family == "metal" and bronze.mono is not None
    assert identity_for(0, 0, "pixar", {}).mono is None
    # The style changes only the shading: the shape is the spec's.
    same = dataclasses.replace(bronze, family="smooth", mono=None)
    assert same == identity_for(0, 0, "pixar", {})


@pytest.mark.parametrize("category, phrase, field, value", [
    ("hairstyle", "afro hairstyle", "hair", "afro"),
    ("hairstyle", "short curly hair", "hair", "curly"),
    ("hairstyle", "long straight hair", "hair", "long"),
    ("hairstyle", "braided hair", "hair", "braids"),
    ("hairstyle", "hair in a messy bun", "hair", "bun"),
    ("glasses", "no glasses", "glasses", "none"),
    ("glasses", "wearing thin-rimmed glasses", "glasses", "thin"),
    ("skin_tone", "dark skin", "skin", (0.36, 0.24, 0.16)),
    ("skin_tone", "fair skin", "skin", (0.96, 0.82, 0.74)),
    ("eye_color", "green eyes", "eye_colour", (0.25, 0.60, 0.30)),
    ("headwear", "no hat", "hat", "none"),
    ("headwear", "wearing a wide-brimmed hat", "hat", "wide_brim"),
    ("facial_hair", "clean-shaven", "facial_hair", "none"),
    ("facial_hair", "full beard", "facial_hair", "beard"),
    ("earrings", "no earrings", "earrings", False),
    ("earrings", "large hoop earrings", "earrings", True),
    ("neckwear", "bare neck", "neckwear", "none"),
    ("neckwear", "wearing a scarf", "neckwear", "scarf"),
    ("nose", "wide nose", "nose", 1.3),
    ("eye_shape", "big round eyes", "eye_size", 1.25),
    ("makeup", "bold red lipstick", "lips", (0.80, 0.08, 0.12)),
])
def test_named_attribute_decides_its_parameter(category, phrase, field, value):
    # Not what the draw gives anyway: without the attribute some of these identities differ.
    assert any(getattr(identity_for(3, index, "pixar", {}), field) != value for index in range(6))
    for index in range(6):
        assert getattr(identity_for(3, index, "pixar", {category: phrase}), field) == value


@pytest.mark.parametrize("attributes, changed", [
    ({"glasses": "wearing round glasses"}, {"glasses"}),
    ({"hairstyle": "mohawk"}, {"hair"}),
    ({"skin_tone": "olive skin"}, {"skin"}),
    ({"hair_color": "pink dyed hair"}, {"hair_colour"}),
    ({"age": "elderly"}, {"hair_colour"}),
    ({"face_shape": "round face"}, {"head_width", "head_height", "jaw"}),
    ({"expression": "smiling", "freckles": "a few freckles"}, set()),  # categories the avatar does not model
    ({"glasses": "no glasses", "headwear": "wearing a beanie", "clothing": "wearing a denim jacket"},
     {"glasses", "hat", "cloth"}),
])
def test_an_attribute_changes_only_its_own_parameters(attributes, changed):
    for index in range(8):
        plain = dataclasses.asdict(identity_for(5, index, "anime", {}))
        named = dataclasses.asdict(identity_for(5, index, "anime", attributes))
        differ = {k for k in plain if plain[k] != named[k]}
        assert differ <= changed, (index, differ - changed)
        for k in plain.keys() - changed:
            assert plain[k] == named[k]


def test_hair_colour_attribute_is_near_the_named_colour():
    blondes = [identity_for(2, i, "pixar", {"hair_color": "blonde hair"}).hair_colour for i in range(20)]
    assert np.allclose(blondes, (0.90, 0.77, 0.42), atol=0.04 + 1e-9)
    assert len(set(blondes)) == 20  # jittered per identity


# ============================================================== the failure model


def _plans(view, yaws, options, n, pitch=5.0, seed=11):
    return [plan_paint(seed, i, "pixar", {}, view, yaws[i % len(yaws)], pitch, options) for i in range(n)]


def _within(k, n, p, sigmas=4.0):
    return abs(k / n - p) <= sigmas * np.sqrt(p * (1 - p) / n)


SIDE_YAWS = (90.0, -75.0, 110.0)
BACK_YAWS = (160.0, -170.0, 140.0, -135.0, 180.0)
OPTS = ProceduralOptions(side_error_rate=0.35, side_yaw_error_deg=15.0, side_pitch_error_deg=6.0,
                         back_janus_rate=0.25, back_flip_rate=0.15)
M = 4000


@pytest.fixture(scope="module")
def side_plans():
    return _plans("side", SIDE_YAWS, OPTS, M)


@pytest.fixture(scope="module")
def back_plans():
    return _plans("back", BACK_YAWS, OPTS, M)


def test_side_views_get_pose_errors_at_the_configured_rate(side_plans):
    failures = [p.failure for p in side_plans]
    assert set(failures) == {"none", "pose_error"}
    k = failures.count("pose_error")
    assert _within(k, M, OPTS.side_error_rate), k / M
    requested = np.array([SIDE_YAWS[i % len(SIDE_YAWS)] for i in range(M)])
    yaw = np.array([p.yaw for p in side_plans])
    pitch = np.array([p.pitch for p in side_plans])
    err = np.array([p.failure == "pose_error" for p in side_plans])
    # Untouched where no error; Gaussian errors with the configured std where there is one.
    assert np.all(yaw[~err] == requested[~err]) and np.all(pitch[~err] == 5.0)
    dyaw = wrap_degrees(yaw[err] - requested[err])
    dpitch = pitch[err] - 5.0
    assert abs(dyaw.std() / OPTS.side_yaw_error_deg - 1) < 0.1 and abs(dyaw.mean()) < 0.1 * OPTS.side_yaw_error_deg
    assert abs(dpitch.std() / OPTS.side_pitch_error_deg - 1) < 0.1
    assert np.all(np.abs(dyaw) > 0)
    # Most errors keep the side group (std 15 deg around |yaw| 75..110), but some leave it.
    groups = [view_group(y) for y in yaw[err]]
    assert 0.6 < groups.count("side") / len(groups) < 1.0


def test_back_views_get_janus_and_flips_at_the_configured_rates(back_plans):
    failures = [p.failure for p in back_plans]
    assert set(failures) == {"none", "janus", "flip"}
    assert _within(failures.count("janus"), M, OPTS.back_janus_rate), failures.count("janus") / M
    assert _within(failures.count("flip"), M, OPTS.back_flip_rate), failures.count("flip") / M
    for i, p in enumerate(back_plans):
        requested = BACK_YAWS[i % len(BACK_YAWS)]
        assert p.janus == (p.failure == "janus")
        assert p.pitch == 5.0
        if p.failure == "flip":
            # The front of the head while the label says back: same side, mirrored about the ear axis.
            assert abs(p.yaw) <= 45.0 and view_group(p.yaw) == "front"
            assert abs(p.yaw) == pytest.approx(180.0 - abs(wrap_degrees(requested)), abs=1e-9)
            if abs(requested) < 180.0:
                assert np.sign(p.yaw) == np.sign(requested)
        else:
            assert p.yaw == requested



def test_front_views_never_fail():
    plans = _plans("front", (0.0, 30.0, -45.0), ProceduralOptions(side_error_rate=1.0, back_janus_rate=0.5,
                                                                   back_flip_rate=0.5), 1000)
    assert {p.failure for p in plans} == {"none"}
    assert [p.yaw for p in plans[:3]] == [0.0, 30.0, -45.0]


@pytest.mark.parametrize("options, view, never", [
    (ProceduralOptions(side_error_rate=0.0), "side", "pose_error"),
    (ProceduralOptions(side_error_rate=1.0, side_yaw_error_deg=0.0, side_pitch_error_deg=0.0), "side", "pose_error"),
    (ProceduralOptions(back_janus_rate=0.0, back_flip_rate=0.5), "back", "janus"),
    (ProceduralOptions(back_janus_rate=0.5, back_flip_rate=0.0), "back", "flip"),
])
def test_a_zero_rate_turns_its_failure_off(options, view, never):
    plans = _plans(view, SIDE_YAWS if view == "side" else BACK_YAWS, options, 1500)
    failures = [p.failure for p in plans]
    assert never not in failures
    if never != "pose_error":  # the other back failure still happens: the switch is per kind
        assert failures.count("janus" if never == "flip" else "flip") > 500


def test_every_rate_zero_paints_every_view_as_asked():
    off = ProceduralOptions(side_error_rate=0.0, back_janus_rate=0.0, back_flip_rate=0.0)
    for view, yaws in (("side", SIDE_YAWS), ("back", BACK_YAWS)):
        plans = _plans(view, yaws, off, 500)
        assert {p.failure for p in plans} == {"none"}
        assert all(p.yaw == yaws[i % len(yaws)] and p.pitch == 5.0 for i, p in enumerate(plans))


def test_all_back_failures_when_rates_sum_to_one():
    plans = _plans("back", BACK_YAWS, ProceduralOptions(back_janus_rate=0.6, back_flip_rate=0.4), 500)
    assert "none" not in {p.failure for p in plans}


def test_plan_is_deterministic_and_identity_independent_of_view():
    a = plan_paint(4, 9, "anime", {"glasses": "no glasses"}, "side", 80.0, -3.0, OPTS)
    assert a == plan_paint(4, 9, "anime", {"glasses": "no glasses"}, "side", 80.0, -3.0, OPTS)
    assert a.failure in FAILURES
    assert plan_paint(4, 9, "anime", {"glasses": "no glasses"}, "back", 170.0, -3.0, OPTS).identity == a.identity


@pytest.mark.parametrize("janus, flip", [(0.7, 0.5), (1.0, 0.01)])
def test_back_rates_over_one_are_refused(janus, flip):
    with pytest.raises(ConfigError, match=r"back_janus_rate \+ procedural.back_flip_rate"):
        ProceduralOptions(back_janus_rate=janus, back_flip_rate=flip).validate()
    assert ProceduralOptions(back_janus_rate=0.5, back_flip_rate=0.5).validate().back_flip_rate == 0.5


def test_mask_png_round_trip():
    rng = np.random.default_rng(0)
    mask = rng.random((24, 24)) < 0.4
    data = encode_mask(mask)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and encode_mask(mask) == data
    out = decode_mask(data)
    assert out.dtype == np.bool_ and np.array_equal(out, mask)


def test_painter_callable_without_ray():
    """ProceduralPainter on a hand-made batch: the paint of each row is what plan_paint + paint say."""
    specs = [("00000000", 101, 0, "pixar", {"hairstyle": "afro hairstyle"}, "front", 10.0, 5.0),
             ("00000001", 102, 1, "anime", {}, "back", 170.0, -5.0),
             ("00000002", 103, 2, "bronze_statue", {}, "side", -90.0, 0.0)]
    batch = {
        "id": np.array([s[0] for s in specs], dtype=object), "seed": np.array([s[1] for s in specs]),
        "index": np.array([s[2] for s in specs]), "style": np.array([s[3] for s in specs], dtype=object),
        "attributes": np.array([json.dumps(s[4]) for s in specs], dtype=object),
        "view": np.array([s[5] for s in specs], dtype=object), "yaw": np.array([s[6] for s in specs]),
        "pitch": np.array([s[7] for s in specs]),
        "camera": np.stack([camera_label(s[6], s[7]) for s in specs]),
    }
    options = ProceduralOptions(back_janus_rate=1.0, back_flip_rate=0.0, side_error_rate=1.0)
    out = ProceduralPainter(options, 16)(batch)
    assert list(out["id"]) == [s[0] for s in specs]
    assert out["truth_camera"].shape == (3, 25) and list(out["truth_failure"]) == ["none", "janus", "pose_error"]
    for i, s in enumerate(specs):
        plan = plan_paint(s[1], s[2], s[3], s[4], s[5], s[6], s[7], options)
        render, label = paint(plan, batch["camera"][i], 16)
        assert np.array_equal(decode_png(out["image_png"][i]), render.image)
        assert np.array_equal(decode_mask(out["truth_silhouette"][i]), render.mask)
        assert np.allclose(out["truth_camera"][i], label)
        assert AvatarIdentity.from_json(out["truth_identity"][i]) == plan.identity
        assert out["truth_yaw"][i] == plan.yaw and out["truth_pitch"][i] == plan.pitch
    assert identity_for(101, 0, "pixar", {"hairstyle": "afro hairstyle"}).hair == "afro"
    assert np.all(out["diffusion_s"] > 0) and np.all(out["call_end"] >= out["call_start"])
    # An empty batch gives empty columns of the right shapes.
    empty = ProceduralPainter(options, 16)({k: v[:0] for k, v in batch.items()})
    assert len(empty["id"]) == 0 and empty["truth_camera"].shape == (0, 25) and len(empty["image_png"]) == 0


# ============================================================== the real job


def procedural_config(output_dir, *overrides):
    return load_config(GenerateConfig, TINY_YAML,
                       [f"output_dir={output_dir}", "progress_interval_s=0", *JOB_OVERRIDES, *overrides])



@pytest.fixture(scope="module")
def reference(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("procedural_reference")
    cfg = procedural_config(out)
    result = run_generation(cfg)
    return cfg, result, read_dataset(out)


def _by_id(table, column="image_png"):
    return dict(zip(table.column("id").to_pylist(), table.column(column).to_pylist()))


def test_job_writes_format_v2_shards_with_truth(reference):
    cfg, result, table = reference
    assert result.num_rows == result.generated == N and result.skipped == 0 and result.shards_written == 3
    assert table.schema.remove_metadata() == ROW_SCHEMA.remove_metadata()
    shards = list_shards(cfg.output_dir)
    assert sorted(pq.ParquetFile(p).metadata.num_rows for p in shards) == [4, 4, 4]
    for path in shards:
        schema = pq.read_schema(path)
        assert schema.metadata[FORMAT_KEY] == str(FORMAT_VERSION).encode() and format_version(schema) == FORMAT_VERSION
    for name in TRUTH_COLUMNS:
        assert table.column(name).null_count == 0, name
    assert set(table.column("base_model").to_pylist()) == {PAINTER_ID}
    assert table.column("controlnets").to_pylist() == [[]] * N and set(table.column("lora").to_pylist()) == {""}
    assert sorted(set(table.column("style").to_pylist())) == ["anime", "bronze_statue", "pixar"]
    assert open_dataset(cfg.output_dir).num_rows == N


def test_dataset_card_names_the_procedural_painter(reference):
    _, result, _ = reference
    card = json.loads(open(result.card_path).read())
    assert card["model_ids"] == {"base_model": PAINTER_ID, "controlnets": [], "lora": ""}
    assert card["config"]["pipeline"]["preset"] == "procedural"
    assert card["config"]["procedural"]["back_flip_rate"] == 0.4
    assert card["format"].endswith(f"v{FORMAT_VERSION}") and card["num_rows"] == card["num_unique_ids"] == N


def test_every_row_repaints_to_its_stored_pixels(reference):
    cfg, _, table = reference
    for row in table.to_pylist():
        image = decode_png(row["image_png"])
        assert image.shape == (32, 32, 3)
        render = repaint(row)
        assert np.array_equal(render.image, image), row["id"]
        mask = decode_mask(row["truth_silhouette"])
        assert mask.shape == (32, 32) and np.array_equal(mask, render.mask) and mask.sum() > 100
        # The truth is the plan of (seed, index) under the job's failure model.
        plan = plan_paint(row["seed"], row["index"], row["style"], json.loads(row["attributes"]), row["view"],
                          row["yaw"], row["pitch"], cfg.procedural)
        assert row["truth_failure"] == plan.failure and row["truth_yaw"] == plan.yaw
        assert row["truth_pitch"] == plan.pitch
        assert AvatarIdentity.from_json(row["truth_identity"]) == plan.identity
        assert (plan.identity.mono is not None) == (row["style"] == "bronze_statue")
    images = [r for r in table.column("image_png").to_pylist()]
    assert len(set(images)) == N


def test_truth_camera_differs_from_the_label_only_where_painting_failed(reference):
    _, _, table = reference
    rows = table.to_pylist()
    failures = [r["truth_failure"] for r in rows]
    assert set(failures) == set(FAILURES), failures  # the seed was chosen so every kind is checked below
    for r in rows:
        requested = camera_label(r["yaw"], r["pitch"])
        assert np.allclose(r["camera"], requested, atol=1e-12)  # label columns stay the requested camera
        assert r["view"] == view_group(r["yaw"])
        truth = np.asarray(r["truth_camera"])
        yaw, pitch = label_to_yaw_pitch(truth)
        assert yaw == pytest.approx(r["truth_yaw"], abs=1e-6) and pitch == pytest.approx(r["truth_pitch"], abs=1e-6)
        gap = np.abs(truth - np.asarray(r["camera"])).max()
        if r["truth_failure"] in ("pose_error", "flip"):
            assert gap > 0.05, r["id"]
            assert r["truth_yaw"] != r["yaw"]
        else:
            assert gap < 1e-9, r["id"]
            assert r["truth_yaw"] == r["yaw"] and r["truth_pitch"] == r["pitch"]
        if r["truth_failure"] == "pose_error":
            assert r["view"] == "side"
        if r["truth_failure"] in ("janus", "flip"):
            assert r["view"] == "back"
        if r["truth_failure"] == "flip":
            assert view_group(r["truth_yaw"]) == "front"


def test_same_config_other_batching_gives_same_bytes(reference, tmp_path):
    _, _, table = reference
    run_generation(procedural_config(tmp_path, "batch_size=3", "rows_per_file=100"))
    again = read_dataset(tmp_path)
    assert again.num_rows == N and len(list_shards(tmp_path)) == 1
    for column in ("image_png", "truth_silhouette", "truth_identity", "truth_failure", "truth_camera"):
        assert _by_id(again, column) == _by_id(table, column), column


class _Crash(RuntimeError):
    pass


def test_killed_job_resumes_to_the_same_dataset(reference, tmp_path):
    _, _, table = reference
    calls = []

    def crash(path, rows):
        calls.append(rows)
        raise _Crash(f"killed after {path.name}")

    with pytest.raises(_Crash):
        run_generation(procedural_config(tmp_path), on_shard=crash)
    assert calls == [4]
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in list_shards(tmp_path)) == 4
    result = run_generation(procedural_config(tmp_path))
    assert result.skipped == 4 and result.generated == N - 4 and result.num_rows == N
    resumed = read_dataset(tmp_path)
    ids = resumed.column("id").to_pylist()
    assert len(ids) == N == len(set(ids))
    assert _by_id(resumed) == _by_id(table)
    assert _by_id(resumed, "truth_silhouette") == _by_id(table, "truth_silhouette")
    for path in list_shards(tmp_path):
        assert format_version(pq.read_schema(path)) == FORMAT_VERSION
    # Other failure rates would mix two datasets in one folder: refused before any work.
    with pytest.raises(ConfigError, match="procedural"):
        run_generation(procedural_config(tmp_path, "procedural.back_flip_rate=0.3"))
    assert run_generation(procedural_config(tmp_path)).generated == 0


def _copy_with_metadata(src, dst_dir, metadata):
    table = pq.read_table(src)
    table = table.replace_schema_metadata(metadata)
    (dst_dir / "shards").mkdir(parents=True)
    pq.write_table(table, dst_dir / "shards" / "part-copy-00000.parquet")


def test_open_dataset_refuses_an_unknown_format_version(reference, tmp_path):
    cfg, _, _ = reference
    src = list_shards(cfg.output_dir)[0]
    _copy_with_metadata(src, tmp_path / "v99", {FORMAT_KEY: b"99"})
    with pytest.raises(ValueError) as err:
        open_dataset(tmp_path / "v99")
    message = str(err.value)
    assert "\n" not in message and "v99" in message and "part-copy-00000.parquet" in message
    # A shard without the key is version 1 and still opens; an unreadable version is one line too.
    _copy_with_metadata(src, tmp_path / "v1", None)
    assert format_version(pq.read_schema(tmp_path / "v1" / "shards" / "part-copy-00000.parquet")) == 1
    assert open_dataset(tmp_path / "v1").num_rows == 4
    _copy_with_metadata(src, tmp_path / "bad", {FORMAT_KEY: b"two"})
    with pytest.raises(ValueError, match="not a version number"):
        open_dataset(tmp_path / "bad")


def test_lora_with_procedural_preset_is_refused_before_any_work(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=re.escape("lora")) as err:
        run_generation(procedural_config(out, "pipeline.lora=some/lora-weights"))
    assert "procedural" in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()
