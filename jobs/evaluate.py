"""Ray job entry point: evaluate a generator: FID overall and per view group (same options as ``avatar3d fid``).

    ray job submit --entrypoint-num-gpus 1 --working-dir . -- python jobs/evaluate.py --model SNAPSHOT_OR_models:/... ...
"""
import os
import sys

# Allow `python jobs/evaluate.py` from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avatar3d.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["fid", *sys.argv[1:]]))
