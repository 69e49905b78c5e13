"""The one reduction of per-token terms (surrogate, KL, entropy) to a micro-batch's share of the step loss."""

from typing import assert_never

import torch
from torch import Tensor

from algorithms.types import Aggregation, Normalizers


def aggregate(x_BT: Tensor, mask_BT: Tensor, mode: Aggregation, norm: Normalizers) -> Tensor:
    """Reduce per-token values to this micro-batch's share of the step loss (the shares sum to the step loss).

    With N = norm.num_tokens, S = norm.num_seqs (rows with a trained token), L = norm.max_len, all counted over the
    whole optimiser step, and |o_i| the trained tokens of row i:
        "token_mean"               sum_i sum_t x_it / N                (DAPO: every token of the step counts the same)
        "seq_mean_token_mean"      sum_i (sum_t x_it / |o_i|) / S      (GRPO: every sequence counts the same)
        "seq_mean_token_sum"       sum_i sum_t x_it / S                (sequence sums, averaged over sequences)
        "seq_mean_token_sum_norm"  sum_i sum_t x_it / (S * L)          (Dr. GRPO: a constant, length-free normaliser)
    """
    B, T = x_BT.shape
    assert mask_BT.shape == (B, T) and mask_BT.dtype == torch.bool, "mask_BT must be a bool (B, T) tensor"
    x_BT = x_BT.masked_fill(~mask_BT, 0.0)  # a fill, not a product: inf/nan on padding must not leak
    match mode:
        case "token_mean":
            return x_BT.sum() / _positive(norm.num_tokens, "num_tokens")
        case "seq_mean_token_mean":
            return (x_BT.sum(dim=-1) / mask_BT.sum(dim=-1).clamp(min=1)).sum() / _positive(norm.num_seqs, "num_seqs")
        case "seq_mean_token_sum":
            return x_BT.sum() / _positive(norm.num_seqs, "num_seqs")
        case "seq_mean_token_sum_norm":
            return x_BT.sum() / (_positive(norm.num_seqs, "num_seqs") * _positive(norm.max_len, "max_len"))
        case _:
            assert_never(mode)


def _positive(value: int, name: str) -> int:
    if value <= 0:
        raise ValueError(f"Normalizers.{name}={value}: the optimiser step has nothing to train on")
    return value
