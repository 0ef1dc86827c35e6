"""Ray job entry point: export one avatar as a coloured mesh (same options as ``avatar3d export-mesh``).

    ray job submit --entrypoint-num-gpus 1 --working-dir . -- python jobs/export_mesh.py --model SNAPSHOT_OR_models:/... ...
"""
import os
import sys

# Allow `python jobs/export_mesh.py` from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avatar3d.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["export-mesh", *sys.argv[1:]]))
