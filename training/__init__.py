"""The one RL training loop, its config, checkpoints with exact resume, distributed training, and the tiny model.

Owns ``train.py`` (sample -> grade -> shape -> filter -> advantages -> update, read top to bottom), nested frozen
config dataclasses, atomic checkpoints, FSDP2/DDP, and the embedded tiny model builder. Uses ``rollout`` to
sample, ``algorithms`` for the math and ``evals`` for rewards: the training reward is the evaluation grader.
"""

from training.config import PROFILES, RunConfig, apply_overrides, from_dict, paper, tiny, to_dict, with_algorithm
from training.tiny import char_tokenizer, random_tiny_model

__all__ = [
    "PROFILES",
    "RunConfig",
    "apply_overrides",
    "char_tokenizer",
    "from_dict",
    "paper",
    "random_tiny_model",
    "tiny",
    "to_dict",
    "train",
    "with_algorithm",
]


def __getattr__(name: str) -> object:
    if name == "train":  # imported on use, so `python -m training.train` does not import itself twice
        from training.train import train

        return train
    raise AttributeError(f"module 'training' has no attribute {name!r}")
