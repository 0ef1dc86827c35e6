"""Character LoRAs: fine-tune Stable Diffusion on ~10 images of one character (the paper's cartoon case).

``train_lora(LoraTrainConfig)`` trains and registers one; generation loads it by
``pipeline.lora`` (a folder, or ``models:/<name>/<version>`` resolved by
:func:`avatar3d.datagen.pipeline.resolve_lora`). Heavy imports stay inside the functions.
"""
