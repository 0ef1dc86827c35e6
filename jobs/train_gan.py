"""Ray job entry point: train the tri-plane GAN (same options as ``avatar3d train-gan``).

Runs unchanged on a laptop (embedded local Ray) and on a cluster::

    python jobs/train_gan.py --config jobs/configs/train_gan_tiny.yaml data.path=outputs/ds
    ray job submit --working-dir . -- python jobs/train_gan.py \\
        --config jobs/configs/train_gan_paper.yaml data.path=/mnt/shared/ds output_dir=/mnt/shared/gan

Inside ``ray job submit`` the driver sees ``RAY_ADDRESS`` and joins that
cluster. Submitting the same run_name again resumes it from its latest checkpoint.
"""
import os
import sys

# Allow `python jobs/train_gan.py` from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avatar3d.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train-gan", *sys.argv[1:]]))
