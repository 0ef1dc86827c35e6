"""Ray job entry point: generate the multi-view dataset.

Runs unchanged on a laptop (embedded local Ray) and on a cluster::

    python jobs/generate_dataset.py --config jobs/configs/generate_tiny.yaml num_samples=32
    ray job submit --working-dir . -- python jobs/generate_dataset.py \\
        --config jobs/configs/generate_sd15.yaml output_dir=/mnt/shared/ds

Inside ``ray job submit`` the driver sees ``RAY_ADDRESS`` and joins that
cluster; re-running the same command resumes an interrupted dataset.
"""
from __future__ import annotations

import argparse
import os
import sys

# Allow `python jobs/generate_dataset.py` from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    from avatar3d.config import ConfigError, load_config
    from avatar3d.runtime import apply_local_defaults

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="YAML config, e.g. jobs/configs/generate_tiny.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. num_samples=16 output_dir=DIR")
    args = parser.parse_args(argv)
    apply_local_defaults()
    try:
        from avatar3d.datagen.job import GenerateConfig, run_generation

        cfg = load_config(GenerateConfig, args.config, args.overrides)
        result = run_generation(cfg)
    except ConfigError as err:
        print(f"generate_dataset: error: {err}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
