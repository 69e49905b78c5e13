"""The one RL training loop, its config, checkpoints with exact resume, distributed training, and the tiny model.

Owns ``train.py`` (sample -> grade -> shape -> filter -> advantages -> update, read top to bottom), nested frozen
config dataclasses, atomic checkpoints, FSDP2/DDP, and the embedded tiny model builder. Uses ``rollout`` to
sample, ``algorithms`` for the math and ``evals`` for rewards: the training reward is the evaluation grader.
"""

__all__: list[str] = []
