"""avatar3d: text prompts and example images -> stylized 3D avatars, at cluster scale.

Stages (one subpackage each, data flowing one way):
scene (cameras, head, guidance) and prompts -> datagen (ControlNet on Ray Data
-> Parquet) -> gan (tri-plane generator, coarse-to-fine discriminator) ->
training (Ray Train + DeepSpeed) -> prior (W-space diffusion) -> evaluation and
export -> tracking (MLflow) and the registry.
"""

__version__ = "0.1.0"
