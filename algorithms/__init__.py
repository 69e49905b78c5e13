"""Pure tensor math of RL for reasoning LLMs: reward shaping, group filtering, advantages, policy losses.

Owns every formula an algorithm is made of (GRPO, Dr.GRPO, DAPO, REINFORCE++-baseline, GSPO, the entropy
baselines, Clip-Cov / KL-Cov, 80/20, BAPO, UCAS and Miner), each algorithm a frozen dataclass preset in the one
registry ``ALGORITHMS``. No I/O, no model, no config files: functions of tensors and explicit floats. Imports torch
only; nothing of ours.
"""

from algorithms.advantages import advantages_with_metrics, compute_advantages
from algorithms.aggregate import aggregate
from algorithms.logprobs import linear_token_logp_and_entropy, token_logit_stats, token_logp_and_entropy
from algorithms.losses import policy_loss
from algorithms.presets import ALGORITHMS, PRESET_OPTIM, Algorithm, get_algorithm
from algorithms.rewards import group_filter, overlong_shaped, shape_rewards
from algorithms.types import AdvantageOutput, LogitStats, LossOutput, Normalizers

__all__ = [
    "ALGORITHMS",
    "PRESET_OPTIM",
    "AdvantageOutput",
    "Algorithm",
    "LogitStats",
    "LossOutput",
    "Normalizers",
    "advantages_with_metrics",
    "aggregate",
    "compute_advantages",
    "get_algorithm",
    "group_filter",
    "linear_token_logp_and_entropy",
    "overlong_shaped",
    "policy_loss",
    "shape_rewards",
    "token_logit_stats",
    "token_logp_and_entropy",
]
