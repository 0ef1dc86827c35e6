"""Ray job entry point: build the prior's (w, CLIP embedding, front render) pairs (same options as
``avatar3d build-prior-pairs``).

    python jobs/build_prior_pairs.py --config jobs/configs/prior_pairs_tiny.yaml snapshot=outputs/gan/gan-tiny/network-snapshot-final.safetensors
    ray job submit --working-dir . -- python jobs/build_prior_pairs.py \\
        --config jobs/configs/prior_pairs_clip.yaml snapshot=/mnt/shared/gan/run/network-snapshot-final.safetensors
"""
import os
import sys

# Allow `python jobs/build_prior_pairs.py` from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avatar3d.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["build-prior-pairs", *sys.argv[1:]]))
