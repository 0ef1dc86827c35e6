"""Multi-view dataset generation (docs/method.md section 2).

specs (prompts + cameras + pose bins) -> guidance images -> SD 1.5 + ControlNet
-> Parquet shards, run on Ray Data by :mod:`avatar3d.datagen.job`.

Modules: ``tokenizer`` (offline CLIP tokenizer), ``pipeline`` (pipeline
factory and :func:`generate`), ``specs`` (the plan), ``schema`` (row schema),
``shards`` (atomic shards, resume, dataset card, EG3D export), ``job`` (the
Ray job; the only module here that imports Ray or MLflow helpers).
"""
from avatar3d.datagen.pipeline import PipelineConfig, build_pipeline, generate, generate_from_config
from avatar3d.datagen.specs import SampleSpec, sample_specs

__all__ = ["PipelineConfig", "SampleSpec", "build_pipeline", "generate", "generate_from_config", "sample_specs"]
