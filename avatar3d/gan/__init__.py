"""EG3D tri-plane 3D GAN with a coarse-to-fine pose-aware dual discriminator (docs/method.md sections 3-5).

Pure PyTorch, CPU or GPU. The public pieces other stages use:

    GANConfig.tiny() / GANConfig.paper()
    G = TriPlaneGenerator(cfg); ws = G.mapping(z, c); planes = G.synthesize_planes(ws)
    out = G.render(planes, ws, c)          # GeneratorOutput(image, image_raw, image_depth, image_mask)
    G.sample_density(planes, points)       # DensitySample(sigma, features)
    GANTrainer(cfg).step(real_img, real_c) # one G + D optimisation step
    save_snapshot(path, G_ema, cfg.to_dict()); load_snapshot(path).generator   # the inference format
    sample_grids(G, cfg) / to_uint8(images) / image_grid(tiles, rows, cols)      # pictures of G
"""
from avatar3d.gan.config import GANConfig
from avatar3d.gan.discriminator import DualDiscriminator
from avatar3d.gan.generator import DensitySample, GeneratorOutput, TriPlaneGenerator
from avatar3d.gan.loss import GANLoss, LossStats
from avatar3d.gan.pose_label import CoarseToFineSelector, PoseCondition, pose_label, yaw_pitch_from_camera
from avatar3d.gan.step import GANTrainer, build_discriminator

__all__ = [
    "GANConfig", "TriPlaneGenerator", "GeneratorOutput", "DensitySample", "DualDiscriminator",
    "GANLoss", "LossStats", "CoarseToFineSelector", "PoseCondition", "pose_label", "yaw_pitch_from_camera",
    "GANTrainer", "build_discriminator",
]
