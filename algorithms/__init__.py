"""Pure tensor math of RL for reasoning LLMs: reward shaping, group filtering, advantages, policy losses.

Owns every formula an algorithm is made of (GRPO, Dr.GRPO, DAPO, REINFORCE++-baseline, GSPO, the entropy
baselines and Miner), each algorithm a frozen dataclass preset in the one registry ``ALGORITHMS``. No I/O, no
model, no config files: functions of tensors and explicit floats. Imports torch only; nothing of ours.
"""

__all__: list[str] = []
