"""Dimension key, the axis vocabularies (one ``Literal`` per axis) and the small frozen dataclasses that cross
function boundaries.

Dimension key (every tensor that crosses a function boundary carries its shape as a name suffix):
    P  prompts in the batch
    G  samples per prompt (the group size)
    B  rows, B = P * G; rows g*G .. g*G+G-1 are prompt g's group (contiguous groups)
    T  response tokens (right-padded)
    V  vocabulary
``mask_BT`` is ``torch.bool``, True on response tokens that are trained on.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

AdvantageEstimator = Literal["group_zscore", "group_center", "group_center_whiten"]
RewardScheme = Literal["binary", "signed"]
RatioLevel = Literal["token", "sequence"]
Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"]
KLEstimator = Literal["k1", "k2", "k3"]
CovMethod = Literal["none", "clip_cov", "kl_cov"]
Credit = Literal["focal", "uniform", "inverse", "rank"]
NormLevel = Literal["group", "batch"]
FilterMetric = Literal["correct", "reward"]
ClipSearch = Literal["none", "bapo"]
UCASVariant = Literal["none", "miner_port", "official"]
MaskNormaliser = Literal["kept", "all"]
SumReducer = Callable[[dict[str, float]], dict[str, float]]  # sums over data-parallel ranks (identity on one rank)


@dataclass(frozen=True)
class Normalizers:
    """Denominators of the step loss, counted once over the whole optimiser step (all micro-batches, all ranks).

    Passing the same ``Normalizers`` to every micro-batch makes the micro-batch losses sum to the full-batch loss
    in every aggregation mode; a ``mask.sum()`` taken inside a micro-batch would not (nanochat, TRL ``bnpo``).
    ``num_seqs`` counts rows with at least one trained token; ``max_len`` is the generation budget
    (max new tokens), Dr. GRPO's constant, not the padded width of a batch.
    """

    num_tokens: int
    num_seqs: int
    max_len: int

    def __post_init__(self) -> None:
        for name in ("num_tokens", "num_seqs", "max_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Normalizers.{name}={value!r} must be a non-negative int")

    @classmethod
    def count(cls, mask_BT: Tensor, max_len: int) -> "Normalizers":
        """Count one micro-batch (or one rank's share); add the counts of all of them with ``+`` or ``total``."""
        assert mask_BT.dim() == 2 and mask_BT.dtype == torch.bool, "mask_BT must be a bool (B, T) tensor"
        return cls(int(mask_BT.sum()), int(mask_BT.any(dim=-1).sum()), int(max_len))

    def __add__(self, other: "Normalizers") -> "Normalizers":
        if self.max_len != other.max_len:
            raise ValueError(f"Normalizers.max_len differs between parts ({self.max_len} vs {other.max_len})")
        return Normalizers(self.num_tokens + other.num_tokens, self.num_seqs + other.num_seqs, self.max_len)

    @classmethod
    def total(cls, parts: Iterable["Normalizers"]) -> "Normalizers":
        """The step's normalisers from its micro-batches' counts (across ranks: all-reduce the two sums instead)."""
        parts = list(parts)
        if not parts:
            raise ValueError("Normalizers.total needs at least one part")
        out = parts[0]
        for part in parts[1:]:
            out = out + part
        return out


@dataclass(frozen=True)
class LogitStats:
    """What the old policy's logits say about each position beyond the sampled token's log-prob (no gradient).

    With z = logits / tau (tau the sampling temperature): ``logit_BT`` = z_t[y_t], the sampled token's scaled logit
    (= logp_t + logsumexp_v z_tv); ``certainty_BT`` = logsumexp_v z_tv - mean_v z_tv, the self-certainty
    KL(U || p_t) + log V (Kang et al. 2025). Zero beyond the mask. UCAS reads them.
    """

    logit_BT: Tensor
    certainty_BT: Tensor


@dataclass(frozen=True)
class LossOutput:
    """``loss``: this micro-batch's share of the step loss (scalar, with grad; shares sum to the step loss).

    ``metrics``: detached scalar tensors, each this micro-batch's share of a token mean over the step (a sum over
    the micro-batch's trained tokens divided by ``norm.num_tokens``), so summing a key over micro-batches (and
    all-reducing a sum over ranks) gives the step's value. Keys: ``clip_frac_low``, ``clip_frac_high``,
    ``approx_kl`` always; ``entropy`` when ``entropy_BT`` is given; ``kl_ref`` when ``ref_logp_BT`` is given;
    per-method extras (``clip_frac_dual``, ``cov_selected_frac``, ``entropy_mask_frac``; BAPO: ``bapo_clip_low``,
    ``bapo_clip_high``, each micro-batch's chosen bound weighted by its share of the step's tokens).
    """

    loss: Tensor
    metrics: dict[str, Tensor]


@dataclass(frozen=True)
class AdvantageOutput:
    """``adv_BT``: float32 advantages, zero outside the mask. ``metrics``: detached scalars over the whole batch.

    Keys: ``nonzero_adv_frac`` (share of trained tokens with a nonzero advantage) always; with Miner's
    ``intrinsic`` on also ``frac_mixed``, ``frac_all_correct``, ``frac_all_wrong``, ``frac_all_correct_varied``
    (shares of groups), ``calibration_scale`` (s), ``intrinsic_mass_share`` (algorithms/miner.py gives each formula),
    ``intrinsic_adv_mean`` and ``intrinsic_adv_max`` (over the trained tokens of rows that received an intrinsic
    advantage, after calibration; 0 when there are none); with the entropy advantage on, ``entropy_adv_mass_share``
    (algorithms/advantages.py).
    """

    adv_BT: Tensor
    metrics: dict[str, Tensor]
