"""Where models come from: a local folder, the hub cache, or the hub.

Every stage that loads weights by id (Stable Diffusion, ControlNets, LoRAs,
CLIP encoders) checks the id here first, so a model that cannot be had fails
at start in one line naming the model, the option and the fix.
"""
from __future__ import annotations

import os


class ModelUnavailableError(RuntimeError):
    """A model id is neither a local folder nor reachable (offline cache miss, no hub access)."""


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def check_model_available(model_id: str, field_name: str = "base_model") -> None:
    """Fail fast, in one line, when ``model_id`` cannot be loaded.

    A local folder must exist. A hub id must be in the local cache when
    ``HF_HUB_OFFLINE=1``; online, the hub is asked for the repo's file list
    (cheap, no weights downloaded).
    """
    if os.path.isabs(model_id) or model_id.startswith((".", "~")) or os.path.isdir(model_id):
        if not os.path.isdir(os.path.expanduser(model_id)):
            raise ModelUnavailableError(
                f"{field_name}={model_id!r}: local folder not found: pass an existing diffusers folder or a hub id")
        return
    # Imported here, not at the top: huggingface_hub reads HF_HUB_OFFLINE once, when first imported, and
    # prior.pairs imports this module (through prior.encoder) before run_build_pairs' apply_local_defaults() sets it.
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HfHubHTTPError

    if _hub_offline():
        try:
            snapshot_download(model_id, local_files_only=True, allow_patterns=["*.json"])
        except Exception:
            raise ModelUnavailableError(
                f"HF_HUB_OFFLINE=1 and model {model_id} is not in the local cache: pass a local folder "
                f"(e.g. {field_name}=/path/to/{model_id.split('/')[-1]}) or allow hub access with HF_HUB_OFFLINE=0"
            ) from None
        return
    try:
        from huggingface_hub import HfApi  # local for the same reason as above

        HfApi().model_info(model_id)
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise ModelUnavailableError(
            f"model {model_id} cannot be reached on the hub ({type(err).__name__}): pass a local folder "
            f"(e.g. {field_name}=/path/to/{model_id.split('/')[-1]}) or check hub access / the model id"
        ) from None
