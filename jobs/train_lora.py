"""Ray job entry point: train a character LoRA (same options as ``avatar3d lora-train``).

Ten images need one GPU, not a cluster: the job is a single process. On a
cluster, ask Ray to start the entrypoint on a GPU node::

    python jobs/train_lora.py --config jobs/configs/lora_tiny.yaml --images chars/mychar --token "<mychar>"
    ray job submit --entrypoint-num-gpus 1 --working-dir . -- python jobs/train_lora.py \\
        --config jobs/configs/lora_sd15.yaml --images /mnt/shared/chars/mychar --token "<mychar>" \\
        output_dir=/mnt/shared/lora/mychar tracking.tracking_uri=$MLFLOW_TRACKING_URI
"""
import os
import sys

# Allow `python jobs/train_lora.py` from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from avatar3d.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["lora-train", *sys.argv[1:]]))
