"""Image-conditioned avatars: a diffusion prior in the GAN's W space (docs/method.md section 6).

- :mod:`avatar3d.prior.encoder`  CLIP vision tower (real or tiny random) and input-image checks
- :mod:`avatar3d.prior.model`    ``PriorTransformer`` over w, DDPM training loss, DDIM/UniPC sampling with CFG
- :mod:`avatar3d.prior.pairs`    (w, embedding, front render) pairs from a generator snapshot, on Ray Data
- :mod:`avatar3d.prior.loop`     plain-PyTorch training loop (engines from the training system)
- :mod:`avatar3d.prior.job`      Ray Train driver (``avatar3d train-prior``), :mod:`avatar3d.prior.ray_worker`
- :mod:`avatar3d.prior.pipeline` ``ImageToAvatarPipeline``: image -> embedding -> w -> renders
- :mod:`avatar3d.prior.registry` the prior as an MLflow pyfunc model

Model code imports no Ray, DeepSpeed or MLflow; only ``job``, ``ray_worker``,
``pairs`` (its Ray driver, lazily) and ``registry`` do.
"""
