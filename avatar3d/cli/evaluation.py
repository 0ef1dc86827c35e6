"""Subcommands of the evaluation stage: ``fid``, ``truth-metrics``, ``walk``, ``turntable``, ``export-mesh``.

Thin shells over :mod:`avatar3d.evaluation.stage`: each flag maps onto a field of
that stage's option class and takes its default from there (the chain's
``evaluate`` stage runs the same functions). ``--model`` takes a snapshot
``.safetensors`` or an MLflow ``models:/...`` URI (:mod:`avatar3d.evaluation.models`).
"""
from __future__ import annotations

from pathlib import Path

from avatar3d.cli.common import default, from_flags, option_help
from avatar3d.config import ConfigError, writable_dir

MODEL_HELP = ("generator: a snapshot .safetensors from avatar3d train-gan, or models:/<name>/<version> "
              "(or models:/<name>@<alias>) from the MLflow registry")


def _options():
    # The option classes live with the stage; importing them here keeps --help free of torch.
    from avatar3d.evaluation import options

    return options


def register(sub) -> None:
    opts = _options()
    _add_fid(sub, opts.FIDOptions)
    _add_truth(sub, opts.TruthOptions)
    _add_walk(sub, opts.WalkOptions)
    _add_turntable(sub, opts.TurntableOptions)
    _add_export_mesh(sub, opts.MeshOptions)


def _model_args(p) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store for models:/ URIs (default $MLFLOW_TRACKING_URI), "
                        "e.g. sqlite:///outputs/gan/mlflow.db")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _load(args):
    from avatar3d.evaluation.models import load_generator

    return load_generator(args.model, args.tracking_uri, device=args.device)


def _build(cls, args, names: dict[str, str]):
    """Flags -> a validated option object (field name -> flag attribute); one-line errors name the flag."""
    return from_flags(cls, {field: getattr(args, attr) for field, attr in names.items()},
                      {field: "--" + attr.replace("_", "-") for field, attr in names.items()})


def _formats(text: str) -> list[str]:
    formats = [f.strip().lower().lstrip(".") for f in text.split(",") if f.strip()]
    if not formats or any(f not in ("gif", "mp4") for f in formats):
        raise ConfigError(f"--formats: {text!r} is not a list of gif / mp4; pass e.g. gif,mp4")
    return formats


# -- fid ------------------------------------------------------------------------------

def _add_fid(sub, O) -> None:
    p = sub.add_parser(
        "fid", help="FID of a generator against its dataset, overall and per view group",
        description="Inception features of generated vs dataset images; generator cameras drawn from "
                    "the dataset's labels (EG3D protocol); FID per view group (front / side / back). Reference "
                    "statistics are cached per dataset content hash. The number is printed and stored with "
                    "its protocol.")
    _model_args(p)
    p.add_argument("--data", required=True, help="dataset folder (or s3:// URI) written by avatar3d generate")
    p.add_argument("--num-fakes", type=int, default=default(O, "num_fakes"), help=option_help(O, "num_fakes"))
    p.add_argument("--seed", type=int, default=default(O, "seed"), help=option_help(O, "seed"))
    p.add_argument("--truncation", type=float, default=default(O, "truncation"), help=option_help(O, "truncation"))
    p.add_argument("--no-per-view", action="store_true", help="overall FID only (one matrix square root)")
    p.add_argument("--extractor", default=default(O, "extractor"), choices=O.__dataclass_fields__["extractor"]
                   .metadata["choices"], help=option_help(O, "extractor"))
    p.add_argument("--frechet", default=default(O, "frechet"), choices=["eigh", "clean-fid"],
                   help=option_help(O, "frechet"))
    p.add_argument("--batch-size", type=int, default=default(O, "batch_size"), help=option_help(O, "batch_size"))
    p.add_argument("--cache-dir", default=None, help="cache folder (default $AVATAR3D_CACHE_DIR or ./.cache)")
    p.add_argument("--out", default=None, help="write the result + protocol as JSON here")
    _overwrite_arg(p)
    p.set_defaults(func=_run_fid, per_view=True)


def _run_fid(args) -> int:
    from avatar3d.evaluation.stage import compute_fid

    args.per_view = not args.no_per_view
    opts = _build(_options().FIDOptions, args, {"num_fakes": "num_fakes", "seed": "seed", "truncation": "truncation",
                                                "per_view": "per_view", "extractor": "extractor",
                                                "frechet": "frechet", "batch_size": "batch_size"})
    from avatar3d.datagen.dataset import TRAIN_COLUMNS, open_dataset

    open_dataset(args.data, columns=TRAIN_COLUMNS, field="--data")
    if args.out:
        _out_file(args.out, overwrite=args.overwrite)
    result = compute_fid(_load(args), args.data, opts, args.device, args.model, args.cache_dir)
    print(result.summary())
    if args.out:
        print(f"wrote {result.save_json(args.out)}")
    return 0


# -- truth metrics ----------------------------------------------------------------------

def _add_truth(sub, O) -> None:
    p = sub.add_parser(
        "truth-metrics", help="silhouette agreement, view consistency and KID per view against the procedural "
                              "world's truth (datasets of pipeline.preset=procedural only)",
        description="Measures that need the truth the procedural painter keeps (docs/method.md section 9): "
                    "silhouette agreement with the nearest held-out truth identity at held-out cameras (beside "
                    "the mean-silhouette baseline and the ceiling a perfect generator would reach), view "
                    "consistency from a view classifier trained on degraded truth renders, and KID (and, on "
                    "Inception features, FID) per view group against clean truth renders. Every figure is "
                    "printed with the number of images behind it.")
    _model_args(p)
    p.add_argument("--data", required=True, help="dataset folder (or URI) painted by the procedural painter")
    for name, flag in (("num_avatars", "--num-avatars"), ("num_identities", "--num-identities"),
                       ("per_group", "--per-group"), ("seed", "--seed")):
        p.add_argument(flag, type=int, default=default(O, name), help=option_help(O, name))
    p.add_argument("--heldout-attributes", default=default(O, "heldout_attributes"),
                   help=option_help(O, "heldout_attributes"))
    p.add_argument("--no-inception", action="store_true", help="skip KID and FID per view on Inception features "
                                                                "(the slow part on a CPU)")
    p.add_argument("--cache-dir", default=None, help="cache folder for the view classifier "
                                                     "(default $AVATAR3D_CACHE_DIR or ./.cache)")
    p.add_argument("--out", default=None, help="write the figures + protocol as JSON here")
    _overwrite_arg(p)
    p.set_defaults(func=_run_truth)


def _run_truth(args) -> int:
    from avatar3d.evaluation.stage import compute_truth
    from avatar3d.evaluation.truth import has_truth
    from avatar3d.atomic import atomic_write

    args.inception = not args.no_inception
    opts = _build(_options().TruthOptions, args, {"num_avatars": "num_avatars", "num_identities": "num_identities",
                                                  "per_group": "per_group", "seed": "seed", "inception": "inception",
                                                  "heldout_attributes": "heldout_attributes"})
    if not has_truth(args.data, field="--data"):
        raise ConfigError(f"--data: {args.data} has no truth columns; pass a dataset made with "
                          "pipeline.preset=procedural")
    if args.out:
        _out_file(args.out, overwrite=args.overwrite)
    result = compute_truth(_load(args).generator, args.data, opts, args.cache_dir)
    print(result.summary())
    if args.out:
        print(f"wrote {atomic_write(Path(args.out), result.to_json())}")
    return 0


# -- walk / turntable ---------------------------------------------------------------------

def _video_args(p, O) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--truncation", type=float, default=default(O, "truncation"), help=option_help(O, "truncation"))
    p.add_argument("--fps", type=int, default=default(O, "fps"), help=option_help(O, "fps", "video frame rate"))
    p.add_argument("--formats", default=",".join(default(O, "formats")),
                   help=f"comma-separated video formats: gif, mp4 (default {','.join(default(O, 'formats'))})")
    _overwrite_arg(p)


def _video_out(args, stem: str) -> None:
    """Check --out before the model loads: a folder that can be made, holding no earlier result of ours."""
    out = writable_dir(args.out, "--out", create=False)
    _refuse_existing([out / f"{stem}_grid.png", *(out / f"{stem}.{f}" for f in args.format_list)], "--out",
                     args.overwrite)


def _add_walk(sub, O) -> None:
    p = sub.add_parser(
        "walk", help="latent walk: interpolate identities in w while the camera moves (grid PNG + GIF/MP4)",
        description="Walk seed_0 -> seed_1 -> ... -> seed_0 by linear interpolation in w while the camera swings "
                    "left-right. Writes walk_grid.png (row i: seed i -> i+1, yaw sweeping across columns) and "
                    "walk.gif / walk.mp4.")
    _model_args(p)
    p.add_argument("--seeds", default=",".join(map(str, default(O, "seeds"))),
                   help=f"comma-separated identities (default {','.join(map(str, default(O, 'seeds')))})")
    p.add_argument("--frames-per-seed", type=int, default=default(O, "frames_per_seed"),
                   help=option_help(O, "frames_per_seed"))
    p.add_argument("--columns", type=int, default=default(O, "columns"), help=option_help(O, "columns"))
    p.add_argument("--yaw", type=float, default=default(O, "yaw"), help=option_help(O, "yaw"))
    p.add_argument("--pitch", type=float, default=default(O, "pitch"), help=option_help(O, "pitch"))
    _video_args(p, O)
    p.set_defaults(func=_run_walk)


def _run_walk(args) -> int:
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: {args.seeds!r} is not a comma-separated list of integers; pass e.g. 0,1,2")
    args.format_list = _formats(args.formats)
    opts = _build(_options().WalkOptions, args, {"seeds": "seed_list", "frames_per_seed": "frames_per_seed",
                                                 "columns": "columns", "yaw": "yaw", "pitch": "pitch",
                                                 "truncation": "truncation", "fps": "fps", "formats": "format_list"})
    from avatar3d.evaluation.stage import write_walk

    _video_out(args, "walk")  # checked now, created once the model has loaded
    G = _load(args).generator
    for path in write_walk(G, opts, writable_dir(args.out, "--out")):
        print(path)
    return 0


def _add_turntable(sub, O) -> None:
    p = sub.add_parser(
        "turntable", help="one avatar seen from all around: camera orbiting 360 deg (grid PNG + GIF/MP4)",
        description="Render one identity from evenly spaced yaws at a fixed elevation. Writes "
                    "turntable_grid.png and turntable.gif / turntable.mp4.")
    _model_args(p)
    p.add_argument("--seed", type=int, default=default(O, "seed"), help=option_help(O, "seed"))
    p.add_argument("--frames", type=int, default=default(O, "frames"), help=option_help(O, "frames"))
    p.add_argument("--pitch", type=float, default=default(O, "pitch"), help=option_help(O, "pitch"))
    _video_args(p, O)
    p.set_defaults(func=_run_turntable)


def _run_turntable(args) -> int:
    args.format_list = _formats(args.formats)
    opts = _build(_options().TurntableOptions, args, {"seed": "seed", "frames": "frames", "pitch": "pitch",
                                                      "truncation": "truncation", "fps": "fps",
                                                      "formats": "format_list"})
    from avatar3d.evaluation.stage import write_turntable

    _video_out(args, "turntable")  # checked now, created once the model has loaded
    G = _load(args).generator
    for path in write_turntable(G, opts, writable_dir(args.out, "--out")):
        print(path)
    return 0


# -- export-mesh ---------------------------------------------------------------------------

def _add_export_mesh(sub, O) -> None:
    p = sub.add_parser(
        "export-mesh", help="extract one avatar's surface as a coloured mesh (GLB / PLY / OBJ) + preview PNG",
        description="Sample the density on an N^3 grid in the tri-plane box, run marching cubes at an iso level "
                    "of the raw density sigma (EG3D: 10), colour vertices with the decoder, export via trimesh. "
                    "World units, y up, face towards +z.")
    _model_args(p)
    p.add_argument("--seed", type=int, default=default(O, "seed"), help=option_help(O, "seed"))
    p.add_argument("--out", required=True, help="mesh file: .glb, .ply or .obj")
    p.add_argument("--resolution", type=int, default=default(O, "resolution"), help=option_help(O, "resolution"))
    p.add_argument("--iso", type=float, default=default(O, "iso"), help=option_help(O, "iso"))
    p.add_argument("--smooth", type=int, default=default(O, "smooth"), help=option_help(O, "smooth"))
    p.add_argument("--faces", type=int, default=default(O, "faces"), help=option_help(O, "faces"))
    p.add_argument("--truncation", type=float, default=default(O, "truncation"), help=option_help(O, "truncation"))
    p.add_argument("--preview", default=None, help="preview PNG (default: <out>_preview.png; 'none' to skip)")
    p.add_argument("--html", action="store_true",
                   help="also write <out>.html beside the mesh: an interactive 3D viewer that works offline (the "
                        "mesh embedded as GLB, the viewer's script copied beside it; installed by make install)")
    _overwrite_arg(p)
    p.set_defaults(func=_run_export_mesh)


def _out_file(path: str, flag: str = "--out", overwrite: bool = False) -> Path:
    """An output file's path, checked before any work: not a folder, in a folder that can be written, and
    not an earlier result unless ``--overwrite``."""
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"{flag}: {path} is a folder; pass a file name inside it")
    writable_dir(out.parent, flag, create=False)
    _refuse_existing([out], flag, overwrite)
    return out


def _refuse_existing(paths: list[Path], flag: str, overwrite: bool) -> None:
    """Outputs of an earlier run are kept unless the user asks for them to be replaced."""
    found = [p for p in paths if p.exists()]
    if found and not overwrite:
        raise ConfigError(f"{flag}: {found[0]} already exists (an earlier result); pass --overwrite to replace it, "
                          f"or another {flag}")


def _overwrite_arg(p) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace outputs of an earlier run (default: refuse, so nothing good is lost)")


def _run_export_mesh(args) -> int:
    from avatar3d.evaluation.stage import mesh_preview_path, write_mesh

    out = _out_file(args.out, overwrite=args.overwrite)
    if out.suffix.lower() not in (".glb", ".ply", ".obj"):
        raise ConfigError(f"--out: {out.name} must end in .glb, .ply or .obj")
    args.format = out.suffix.lower()[1:]
    args.with_preview = (args.preview or "").lower() != "none"
    if args.with_preview:
        _out_file(args.preview or str(mesh_preview_path(out)), "--preview", args.overwrite)
    page = out.with_suffix(".html") if args.html else None
    if page is not None:
        _refuse_existing([page], "--out", args.overwrite)
        from avatar3d.evaluation.viewer import ViewerNotInstalled, require_script

        try:
            require_script()
        except ViewerNotInstalled as exc:
            raise ConfigError(f"--html: {exc}; or leave out --html")
    opts = _build(_options().MeshOptions, args, {"seed": "seed", "resolution": "resolution", "iso": "iso",
                                                 "smooth": "smooth", "faces": "faces", "truncation": "truncation",
                                                 "format": "format", "preview": "with_preview"})

    preview = Path(args.preview) if args.with_preview and args.preview else None
    mesh, paths = write_mesh(_load(args).generator, opts, out, preview)
    print(f"{paths[0]}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, "
          f"volume {mesh.to_trimesh().volume:.4f} (box units^3)")
    for path in paths[1:]:
        print(path)
    if page is not None:
        print(_write_mesh_page(page, out, mesh, args, paths[1] if len(paths) > 1 else None))
    return 0


def _write_mesh_page(page: Path, out: Path, mesh, args, preview: Path | None) -> Path:
    """The viewer page beside the mesh: the GLB itself (or, for PLY / OBJ, the same mesh as GLB)."""
    from avatar3d.evaluation.mesh import mesh_bytes
    from avatar3d.evaluation.viewer import painter_note, snapshot_painter, write_viewer

    glb = out.read_bytes() if out.suffix.lower() == ".glb" else mesh_bytes(mesh, "glb")
    label = (f"Marching-cubes mesh ({out.name}) of seed {args.seed} of {args.model}, at density level "
             f"{args.iso:g} on a {args.resolution}^3 grid, vertex colours from the decoder. "
             + painter_note(snapshot_painter(args.model)))
    poster = preview.name if preview is not None and preview.parent == page.parent else None
    return write_viewer(page, glb, f"avatar3d mesh: {out.name}", label, poster)[0]
