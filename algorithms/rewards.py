"""Rewards from correctness (with DAPO's overlong shaping) and DAPO's dynamic-sampling group filter."""

from typing import assert_never

import torch
from torch import Tensor

from algorithms.presets import Algorithm


def shape_rewards(algo: Algorithm, correct_B: Tensor, lengths_B: Tensor, max_new_tokens: int) -> Tensor:
    """Float32 rewards from correctness and response length.

    Base reward (``algo.reward``): "binary" r = 1[correct]; "signed" r = +1 if correct else -1 (DAPO, 2503.14476).
    Overlong shaping (DAPO eq. 13, on when ``algo.overlong_buffer`` > 0), with L_max = max_new_tokens and
    L_cache = overlong_buffer * L_max (DAPO: 4096 of 20480 = 0.2), added to the base reward:
        0                                  if L <= L_max - L_cache
        ((L_max - L_cache) - L) / L_cache  if L_max - L_cache < L <= L_max
        -1                                 if L > L_max
    It is a function of length only: a truncated response is penalised through its length.
    """
    (B,) = correct_B.shape
    assert lengths_B.shape == (B,), f"lengths_B must have shape ({B},), got {tuple(lengths_B.shape)}"
    if correct_B.dtype != torch.bool:
        raise ValueError(f"correct_B must be a bool tensor, got {correct_B.dtype}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    match algo.reward:
        case "binary":
            rewards_B = correct_B.float()
        case "signed":
            rewards_B = correct_B.float() * 2.0 - 1.0
        case _:
            assert_never(algo.reward)
    if algo.overlong_buffer > 0:
        cache = algo.overlong_buffer * max_new_tokens
        expected = _overlong_start(algo, max_new_tokens)
        length_B = lengths_B.float()
        penalty_B = ((expected - length_B) / cache).clamp(max=0.0)  # 0 up to L_max - L_cache, then linear
        penalty_B = torch.where(length_B > max_new_tokens, torch.full_like(penalty_B, -1.0), penalty_B)
        rewards_B = rewards_B + penalty_B
    return rewards_B


def _overlong_start(algo: Algorithm, max_new_tokens: int) -> float:
    """L_max - L_cache: the length after which overlong shaping cuts the reward."""
    return max_new_tokens - algo.overlong_buffer * max_new_tokens


def overlong_shaped(algo: Algorithm, lengths_B: Tensor, max_new_tokens: int) -> Tensor:
    """Bool per response: does overlong shaping change its reward (shaping on, L > L_max - L_cache)?"""
    if algo.overlong_buffer <= 0:
        return torch.zeros(lengths_B.shape, dtype=torch.bool, device=lengths_B.device)
    return lengths_B.float() > _overlong_start(algo, max_new_tokens)


def group_filter(algo: Algorithm, correct_B: Tensor, rewards_B: Tensor, group_size: int) -> Tensor:
    """Bool per group: keep it? DAPO dynamic sampling (``drop_uniform_groups``) keeps a group with something to learn
    from, by ``algo.filter_metric``:
        "correct": 0 < #correct < G (DAPO 2503.14476 eq. 11; verl's recipe ``filter_groups.metric=acc``), so an
                   all-correct or all-wrong group is dropped even when overlong shaping made its rewards differ;
        "reward":  the G shaped rewards are not all equal.
    Otherwise every group is kept. A group of one is never mixed, so with G = 1 dynamic sampling keeps nothing.
    """
    (B,) = rewards_B.shape
    assert correct_B.shape == (B,), f"correct_B must have shape ({B},), got {tuple(correct_B.shape)}"
    if group_size < 1 or B % group_size != 0:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide the batch of {B} rows")
    P = B // group_size
    if not algo.drop_uniform_groups:
        return torch.ones(P, dtype=torch.bool, device=rewards_B.device)
    match algo.filter_metric:
        case "correct":
            num_correct_P = correct_B.view(P, group_size).sum(dim=-1)
            return (num_correct_P > 0) & (num_correct_P < group_size)
        case "reward":
            rewards_PG = rewards_B.view(P, group_size)
            return rewards_PG.amax(dim=-1) > rewards_PG.amin(dim=-1)
        case _:
            assert_never(algo.filter_metric)
