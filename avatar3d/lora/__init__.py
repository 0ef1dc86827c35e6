"""Character LoRAs: fine-tune Stable Diffusion on ~10 images of one character (the paper's cartoon case).

``train_lora(LoraTrainConfig)`` trains and registers one; ``resolve_lora(uri)``
turns ``models:/<name>/<version>`` into the local folder the datagen pipeline
loads (``pipeline.lora``). Heavy imports stay inside the functions.
"""
from avatar3d.lora.resolve import is_registry_uri, resolve_lora

__all__ = ["is_registry_uri", "resolve_lora"]
