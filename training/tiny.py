"""The embedded tiny model: a character-level tokenizer and a small Qwen3 causal LM, built in code (no hub).

The warm-started model (supervised on worked solutions of the synthetic tasks) is built on first use and cached;
``python -m training.tiny build`` rebuilds it.
"""

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

PAD, EOS = "<pad>", "<eos>"
CHARACTERS = string.digits + string.ascii_letters + string.punctuation + " \n"


def char_tokenizer(padding_side: str = "left") -> PreTrainedTokenizerFast:
    """A character-level tokenizer that round-trips every string over ``CHARACTERS`` exactly."""
    vocab = {PAD: 0, EOS: 1} | {c: i + 2 for i, c in enumerate(CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, padding_side=padding_side)


def tiny_config(vocab_size: int, hidden: int = 128, layers: int = 4, max_positions: int = 512) -> Qwen3Config:
    """Qwen3, tied embeddings, 4 heads / 2 kv heads of 32: about 0.8 M parameters at a character vocabulary."""
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )


def random_tiny_model(out_dir: str | Path, seed: int = 0, **config_overrides: int) -> Path:
    """Save a randomly initialised tiny model and its tokenizer to ``out_dir`` (a standard HF model folder)."""
    tokenizer = char_tokenizer()
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny_config(len(tokenizer), **config_overrides))
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
