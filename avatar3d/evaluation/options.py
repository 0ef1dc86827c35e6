"""Options of the evaluation stage (``EvaluateConfig``) and of its parts: FID, walk, turntable, mesh.

Plain dataclasses with no heavy imports, so the CLI's ``--help`` can read their
defaults; :mod:`avatar3d.evaluation.stage` runs them. These defaults are the only
ones: the subcommands' flags and the chain take theirs from here.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from avatar3d.config import INPUT, ConfigError, check_fits_in_memory, seed_field

FAKE_BYTES = 2048 * 8 + 25 * 8  # one fake's Inception features and camera label

# Extractor names -> where the Inception weights come from (avatar3d.evaluation.features).
EXTRACTORS = {"inception": "auto", "inception-clean-fid": "clean-fid", "inception-fid-helper": "fid-helper"}
# EG3D's surface level of the raw density sigma for meshes of trained generators.
EG3D_ISO_SIGMA = 10.0

PARTS = ("fid", "truth", "walk", "turntable", "mesh")
VIDEO_FORMATS = ("gif", "mp4")
MESH_FORMATS = ("glb", "ply", "obj")
# Named attributes of the truth metrics' held-out identities: the dataset's mix, or none named.
HELDOUT_ATTRIBUTES = ("dataset", "none")


@dataclass
class FIDOptions:
    num_fakes: int = field(default=10_000, metadata={"min": 2, "help": "generated images (50000 in papers)"})
    seed: int = seed_field(help="seed of latents, cameras and ray jitter")
    truncation: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0, "help": "truncation psi (1 = none)"})
    per_view: bool = field(default=True, metadata={"help": "FID per view group (front / side / back) too"})
    extractor: str = field(default="inception", metadata={"choices": list(EXTRACTORS),
                                                           "help": "Inception weights to use"})
    frechet: str = field(default="eigh", metadata={
        "choices": ["eigh", "clean-fid"],
        "help": "matrix square root: eigh (clean-fid's value to ~1e-14, ~5x faster) or clean-fid's sqrtm"})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "generator batch (part of the protocol)"})

    def validate(self) -> None:
        # The features of every fake are held for the statistics (2048 float64), plus the camera labels.
        check_fits_in_memory(self.num_fakes, FAKE_BYTES, "num_fakes", "FID's features of the fakes")


@dataclass
class TruthOptions:
    """Truth metrics (datasets of the procedural painter only): avatar3d.evaluation.truth."""

    num_avatars: int = field(default=32, metadata={"min": 1, "help": "generated avatars for silhouette agreement"})
    num_identities: int = field(default=64, metadata={"min": 2, "help": "held-out truth identities to match against"})
    per_group: int = field(default=48, metadata={"min": 2, "help": "renders per view group for view consistency and KID"})
    seed: int = seed_field(help="seed of latents, held-out identities and cameras")
    classifier_train: int = field(default=1024, metadata={
        "min": 3, "help": "truth renders the view classifier trains on (trained once per key, then cached)"})
    classifier_steps: int = field(default=800, metadata={"min": 1, "help": "view classifier training steps"})
    heldout_attributes: str = field(default="dataset", metadata={
        "choices": list(HELDOUT_ATTRIBUTES),
        "help": "named attributes of the held-out identities: the dataset's mix (dataset) or none named (none: "
                "the painter's own draws, the discriminator ablation's frozen protocol)"})
    inception: bool = field(default=True, metadata={
        "help": "also KID per view group on Inception features (about 0.25 s per image on a CPU core); "
                "training's truth_ticks never compute it"})


def add_heldout_attributes_argument(parser) -> None:
    """``--heldout-attributes`` for the benchmark scripts, with :class:`TruthOptions`' choices, default and help."""
    spec = next(f for f in fields(TruthOptions) if f.name == "heldout_attributes")
    parser.add_argument("--heldout-attributes", choices=HELDOUT_ATTRIBUTES, default=spec.default,
                        help=spec.metadata["help"])


@dataclass
class WalkOptions:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3], metadata={"help": "identities to walk through"})
    frames_per_seed: int = field(default=24, metadata={"min": 1, "help": "video frames per transition"})
    columns: int = field(default=7, metadata={"min": 2, "help": "grid columns per transition"})
    yaw: float = field(default=60.0, metadata={"help": "camera swing amplitude, degrees"})
    pitch: float = field(default=10.0, metadata={"help": "camera nod amplitude, degrees"})
    truncation: float = field(default=0.7, metadata={"min": 0.0, "max": 1.0})
    fps: int = field(default=24, metadata={"min": 1})
    formats: list[str] = field(default_factory=lambda: list(VIDEO_FORMATS), metadata={"help": "gif and/or mp4"})

    def validate(self) -> None:
        _check_formats(self.formats, "walk.formats")
        if not self.seeds:
            raise ConfigError("walk.seeds: pass at least one seed, e.g. walk.seeds=[0,1,2]")


@dataclass
class TurntableOptions:
    seed: int = seed_field(help="identity")
    frames: int = field(default=36, metadata={"min": 2, "help": "views over 360 degrees"})
    pitch: float = field(default=0.0, metadata={"help": "camera elevation, degrees (+ is above)"})
    truncation: float = field(default=0.7, metadata={"min": 0.0, "max": 1.0})
    fps: int = field(default=24, metadata={"min": 1})
    formats: list[str] = field(default_factory=lambda: list(VIDEO_FORMATS), metadata={"help": "gif and/or mp4"})

    def validate(self) -> None:
        _check_formats(self.formats, "turntable.formats")


@dataclass
class MeshOptions:
    seed: int = seed_field(help="identity")
    resolution: int = field(default=256, metadata={"min": 8, "max": 1024, "help": "grid size N (EG3D uses 512)"})
    iso: float = field(default=EG3D_ISO_SIGMA, metadata={
        "help": "raw-density level of the surface (EG3D: 10; density = softplus(sigma - 1))"})
    smooth: int = field(default=0, metadata={"min": 0, "help": "Taubin smoothing iterations"})
    faces: int = field(default=0, metadata={"min": 0, "help": "decimate to about this many faces (0 = keep)"})
    truncation: float = field(default=0.7, metadata={"min": 0.0, "max": 1.0})
    format: str = field(default="glb", metadata={"choices": list(MESH_FORMATS)})
    preview: bool = field(default=True, metadata={"help": "also write <mesh>_preview.png"})


@dataclass
class EvaluateConfig:
    model: str = field(default="", metadata={"help": "snapshot .safetensors or models:/<name>/<version|@alias>", "path": INPUT})
    data: str = field(default="", metadata={"help": "dataset (folder or URI) for FID", "path": INPUT})
    output_dir: str = field(default="outputs/evaluate", metadata={"help": "fid.json, walk/, turntable/, mesh/"})
    tracking_uri: str = field(default="", metadata={"help": "MLflow store for models:/ URIs"})
    device: str = field(default="cpu", metadata={"help": "torch device"})
    parts: list[str] = field(default_factory=lambda: list(PARTS), metadata={"choices": list(PARTS)})
    fid: FIDOptions = field(default_factory=FIDOptions)
    truth: TruthOptions = field(default_factory=TruthOptions, metadata={
        "help": "truth metrics; skipped with a note when the dataset has no truth columns"})
    walk: WalkOptions = field(default_factory=WalkOptions)
    turntable: TurntableOptions = field(default_factory=TurntableOptions)
    mesh: MeshOptions = field(default_factory=MeshOptions)

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("model: no generator given; pass model=<snapshot .safetensors or models:/name/version>")
        if "fid" in self.parts and not self.data:
            raise ConfigError("data: FID needs the dataset; pass data=<folder written by avatar3d generate> "
                              "or leave fid out of parts")




def _check_formats(formats: list[str], name: str) -> None:
    bad = [f for f in formats if f not in VIDEO_FORMATS]
    if bad or not formats:
        raise ConfigError(f"{name}: {formats} is not a list of gif / mp4; pass e.g. {name}=[gif,mp4]")
