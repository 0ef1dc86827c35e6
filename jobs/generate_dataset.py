"""Ray job entry point: generate the multi-view dataset (same options as ``avatar3d generate``).

Runs unchanged on a laptop (embedded local Ray) and on a cluster::

    python jobs/generate_dataset.py --config jobs/configs/generate_tiny.yaml num_samples=32
    ray job submit --working-dir . -- python jobs/generate_dataset.py \\
        --config jobs/configs/generate_sd15.yaml output_dir=/mnt/shared/ds

Inside ``ray job submit`` the driver sees ``RAY_ADDRESS`` and joins that
cluster; re-running the same command resumes an interrupted dataset.
"""
import os
import sys

# Allow `python jobs/generate_dataset.py` from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avatar3d.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
