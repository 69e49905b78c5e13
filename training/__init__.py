"""The one RL training loop, its config, checkpoints with exact resume, distributed training, and the tiny model.

Owns ``train.py`` (sample -> grade -> shape -> filter -> advantages -> update, read top to bottom), nested frozen
config dataclasses, atomic checkpoints, FSDP2/DDP, and the embedded tiny model builder. Uses ``rollout`` to
sample, ``algorithms`` for the math and ``evals`` for rewards: the training reward is the evaluation grader.
"""

from training.config import PROFILES, RunConfig, apply_overrides, from_dict, paper, tiny, to_dict, with_algorithm

__all__ = [
    "PROFILES",
    "RunConfig",
    "apply_overrides",
    "char_tokenizer",
    "ensure_tiny_model",
    "from_dict",
    "paper",
    "random_tiny_model",
    "tiny",
    "to_dict",
    "train",
    "with_algorithm",
]


def __getattr__(name: str) -> object:
    # imported on use, so that `python -m training.train` and `python -m training.tiny` do not import themselves twice
    if name == "train":
        from training.train import train

        return train
    if name in ("char_tokenizer", "ensure_tiny_model", "random_tiny_model"):
        import importlib

        return getattr(importlib.import_module("training.tiny"), name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
