"""Options of ``avatar3d text-to-avatar`` (light: ``--help`` and the chain read them without torch).

The painting half is datagen's painter config (:class:`~avatar3d.datagen.config.PipelineConfig`:
``pipeline.preset`` = ``sd15`` real SD 1.5 + ControlNet, ``tiny`` random tiny weights for tests,
``procedural`` the parametric painter with known truth); the avatar half is
:class:`~avatar3d.prior.config.AvatarOptions`, shared with ``image-to-avatar``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from avatar3d.config import ConfigError, seed_field
from avatar3d.datagen.config import PipelineConfig
from avatar3d.prior.config import AvatarOptions
from avatar3d.prompts import load_styles

MAX_PROMPT_CHARS = 1000


@dataclass
class TextToAvatarConfig(AvatarOptions):
    """Options of ``avatar3d text-to-avatar``: a text prompt -> a painted front view -> the prior's w -> a 3D avatar."""

    prompt: str = field(default="", metadata={"help": "what the avatar looks like, e.g. 'a woman with red hair and "
                                                      "round glasses' (attribute phrases of prompts/attributes.yaml "
                                                      "drive the procedural painter)"})
    output_dir: str = field(default="", metadata={"help": "painted front view, prompt summary, views, turntable, mesh"})
    style: str = field(default="pixar", metadata={"help": "built-in style name (prompts/styles.yaml): leads the "
                                                          "prompt; the procedural painter's shading family"})
    resolution: int = field(default=512, metadata={"min": 16, "max": 2048,
                                                   "help": "size of the painted front view (multiple of 8)"})
    pipeline: PipelineConfig = field(default_factory=PipelineConfig, metadata={
        "help": "the painter: preset sd15 (SD 1.5 + ControlNet), tiny (random weights) or procedural"})
    seed: int = seed_field(help="painting seed (the procedural painter's unnamed parameters) and sampling seed")
    overwrite: bool = field(default=False, metadata={"help": "write into an output_dir that already holds files"})

    def validate(self) -> "TextToAvatarConfig":
        if not self.prompt.strip():
            raise ConfigError("prompt: empty; pass a description of the avatar, e.g. "
                              "'a woman with red hair and round glasses'")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise ConfigError(f"prompt: {len(self.prompt)} characters; pass at most {MAX_PROMPT_CHARS}")
        if not self.output_dir:
            raise ConfigError("output_dir: pass the folder the avatar is written to")
        if self.resolution % 8:
            raise ConfigError(f"resolution: {self.resolution} is not a multiple of 8 (the VAE's scale); pass e.g. "
                              f"{max(16, self.resolution // 8 * 8)}")
        self.validate_avatar()
        self.style_entry()
        try:
            self.pipeline.validate()
        except ValueError as err:
            raise ConfigError(str(err)) from None
        return self

    def style_entry(self):
        """The built-in :class:`~avatar3d.prompts.Style` named by ``style`` (ConfigError when unknown)."""
        import difflib

        by_name = {s.name: s for s in load_styles()}
        if self.style not in by_name:
            close = difflib.get_close_matches(self.style, list(by_name), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known styles: {', '.join(list(by_name)[:8])}, ..."
            raise ConfigError(f"style: unknown style {self.style!r}; {hint}")
        return by_name[self.style]
