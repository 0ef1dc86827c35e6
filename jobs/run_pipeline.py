"""Ray job entry point: the whole pipeline, stage after stage (same options as ``avatar3d run-pipeline``).

    python jobs/run_pipeline.py --config jobs/configs/demo_tiny.yaml
    ray job submit --working-dir . -- python jobs/run_pipeline.py --config jobs/configs/demo_tiny.yaml
"""
import os
import sys

# Allow `python jobs/run_pipeline.py` from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avatar3d.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run-pipeline", *sys.argv[1:]]))
