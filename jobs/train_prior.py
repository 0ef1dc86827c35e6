"""Ray job entry point: train the W-space diffusion prior (same options as ``avatar3d train-prior``).

    python jobs/train_prior.py --config jobs/configs/prior_train_tiny.yaml pairs=outputs/prior_pairs
    ray job submit --working-dir . -- python jobs/train_prior.py \\
        --config jobs/configs/prior_train_paper.yaml pairs=/mnt/shared/prior_pairs output_dir=/mnt/shared/prior

Submitting the same run_name again resumes it from its latest checkpoint.
"""
import os
import sys

# Allow `python jobs/train_prior.py` from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avatar3d.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train-prior", *sys.argv[1:]]))
