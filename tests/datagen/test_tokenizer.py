"""The offline CLIP tokenizer gives CLIP's ids (OpenAI's reference tokenizer is the oracle)."""
import importlib.util
import os

import pytest

from avatar3d.datagen.tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, build_clip_tokenizer, find_bpe_file

SENTENCES = [
    "a photo of a cat",
    "A Pixar-style 3D avatar, side view, curly hair!",
    "back of the head, from behind",
    "bronze statue of a smiling old man with round glasses, 4k",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer()


def _openai_reference_tokenizer():
    """OpenAI's SimpleTokenizer, loaded from its file (``import clip`` itself needs pkg_resources)."""
    path = os.path.join(os.path.dirname(find_bpe_file()), "simple_tokenizer.py")
    spec = importlib.util.spec_from_file_location("_clip_simple_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as err:  # ftfy / regex come with the dev extra: the oracle must never be skipped silently
        pytest.fail(f"reference tokenizer unavailable ({err}): install the dev extra (pip install -e '.[dev]')")
    return module.SimpleTokenizer(find_bpe_file())


def test_vocab_size_and_special_ids(tokenizer):
    assert len(tokenizer) == VOCAB_SIZE
    assert tokenizer.bos_token_id == BOS_ID == 49406
    assert tokenizer.eos_token_id == EOS_ID == 49407
    assert tokenizer.pad_token_id == EOS_ID  # SD 1.5 pads with <|endoftext|>
    assert tokenizer.model_max_length == 77


def test_known_word_ids(tokenizer):
    # "a photo of a cat" is the canonical CLIP example; the ids are in countless model cards.
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    # Single bytes come first: "!" is byte 33, the first printable symbol (id 0); "!</w>" is 256.
    assert tokenizer.convert_tokens_to_ids(["!", "!</w>"]) == [0, 256]


def test_ids_equal_openai_reference(tokenizer):
    reference = _openai_reference_tokenizer()
    for sentence in SENTENCES:
        ids = tokenizer(sentence).input_ids
        assert ids[0] == BOS_ID and ids[-1] == EOS_ID
        assert ids[1:-1] == reference.encode(sentence), sentence


def test_padding_to_77_and_lowercasing(tokenizer):
    ids = tokenizer("A Cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77
    assert ids[:4] == [BOS_ID, 320, 2368, EOS_ID]
    assert set(ids[4:]) == {EOS_ID}
    long = tokenizer("cat " * 200, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(long) == 77 and long[-1] == EOS_ID
