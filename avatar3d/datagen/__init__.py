"""Multi-view dataset generation (docs/method.md section 2).

specs (prompts + cameras + pose bins) -> guidance images -> SD 1.5 + ControlNet
-> Parquet shards, run on Ray Data by :mod:`avatar3d.datagen.job`.

Modules: ``config`` (GenerateConfig and PipelineConfig; light, for --help), ``tokenizer`` (offline CLIP tokenizer), ``pipeline`` (pipeline
factory and :func:`generate`), ``specs`` (the plan), ``schema`` (row schema),
``shards`` (atomic shards, resume, dataset card, EG3D export), ``job`` (the
Ray job; the only module here that imports Ray or MLflow helpers). The package
imports nothing itself, so reading a config never loads torch or diffusers.
"""
