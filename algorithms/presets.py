"""An algorithm is data: one frozen dataclass whose fields are independent axes, and the one registry of presets.

The dataclass defaults ARE the ``grpo`` preset, so each preset below spells out exactly the fields in which it
differs from GRPO (the README's preset table is these lines). An ablation is a one-field diff:
``get_algorithm("miner", credit="uniform")``.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, get_args, get_origin, get_type_hints

from algorithms.types import (
    AdvantageEstimator,
    Aggregation,
    ClipSearch,
    CovMethod,
    Credit,
    FilterMetric,
    KLEstimator,
    MaskNormaliser,
    NormLevel,
    RatioLevel,
    RewardScheme,
    UCASVariant,
)


@dataclass(frozen=True)
class Algorithm:
    """Every axis of an RL-for-reasoning algorithm, one field each; defaults are GRPO (DeepSeekMath, 2402.03300).

    Rewards and filtering (``shape_rewards``, ``group_filter``):
        reward            "binary": r = 1 if correct else 0; "signed": +1 / -1 (DAPO).
        overlong_buffer   DAPO overlong shaping, L_cache as a fraction of L_max = max new tokens; 0 = off.
        drop_uniform_groups  DAPO dynamic sampling: drop groups with nothing to learn from (the trainer refills).
        filter_metric     what dynamic sampling compares: "correct" keeps 0 < #correct < G (DAPO's rule; verl's
                          ``filter_groups.metric=acc``), "reward" keeps groups whose shaped rewards differ.
    Advantages (``compute_advantages``):
        advantage         "group_zscore" (GRPO), "group_center" (Dr. GRPO), "group_center_whiten" (REINFORCE++-b.).
        intrinsic         Miner: all-correct groups get intrinsic advantage max(0, mean(l) - l_i), l: mean old logp
        credit, gamma     Miner token credit: "focal" (1-p)^gamma, "uniform", "inverse" softmax(-gamma logp), "rank".
        norm_level        Miner: mean of l over the group or over every all-correct response in the batch.
        calibration, calibration_lambda  Miner: s = min(1, lambda sum|A_verifiable| / sum|A_intrinsic|).
        correct_scale, incorrect_scale   Miner: scale of all-correct intrinsic advantages / all-wrong penalties.
        entropy_adv_alpha, entropy_adv_kappa  Cheng et al.: A += min(alpha H_old, |A| / kappa); alpha 0 = off.
        ucas              UCAS (Xie et al.) advantage shaping from the old policy's certainty and logits
                          (``algorithms/ucas.py``): "miner_port" as Miner's comparison ran it, "official" as the
                          authors' code; "none" = off.
    Policy loss (``policy_loss``):
        ratio_level       "token" (PPO) or "sequence" (GSPO's length-normalised sequence ratio).
        clip_low, clip_high  epsilon_low / epsilon_high of the clipped surrogate; clip_high > clip_low is clip-higher.
        dual_clip         Dual-clip constant c (> 1) bounding the loss of negative-advantage tokens; None = off.
                          3 is verl's default (its vanilla PPO loss always applies it).
        clip_search       "bapo": absolute ratio bounds searched per micro-batch from [1 - clip_low, 1 + clip_high]
                          (``algorithms/bapo.py``) with the ``bapo_*`` maxima, steps and target below.
        cov_method        "clip_cov" / "kl_cov" (Cui et al.) with their ratios, bounds and coefficient below.
        entropy_mask_quantile  80/20: only tokens with entropy >= this quantile get policy gradient; 0 = all tokens.
        entropy_mask_normaliser  80/20: the surrogate's token mean over the "kept" tokens (the authors' code) or
                          over "all" trained tokens (the paper's eq.).
        aggregation       How token terms reduce to the loss (see ``aggregate``).
        kl_coef, kl_estimator  beta and estimator of the KL to the reference policy; 0 = no reference model needed.
        entropy_coef      c_H of the entropy bonus (loss - c_H * aggregate(entropy)).
    """

    # rewards and filtering
    reward: RewardScheme = "binary"
    overlong_buffer: float = 0.0
    drop_uniform_groups: bool = False
    filter_metric: FilterMetric = "correct"
    # advantages
    advantage: AdvantageEstimator = "group_zscore"
    intrinsic: bool = False
    credit: Credit = "focal"
    gamma: float = 2.0
    norm_level: NormLevel = "group"
    calibration: bool = False
    calibration_lambda: float = 0.0015
    correct_scale: float = 1.0
    incorrect_scale: float = 0.0
    entropy_adv_alpha: float = 0.0
    entropy_adv_kappa: float = 2.0
    ucas: UCASVariant = "none"
    # policy loss
    ratio_level: RatioLevel = "token"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = 3.0
    clip_search: ClipSearch = "none"
    bapo_low_max: float = 0.95
    bapo_low_step: float = 0.05
    bapo_high_max: float = 2.0
    bapo_high_step: float = 0.1
    bapo_target: float = 0.5
    cov_method: CovMethod = "none"
    clip_cov_ratio: float = 2e-4
    clip_cov_low: float = 1.0
    clip_cov_high: float = 5.0
    kl_cov_ratio: float = 2e-3
    kl_cov_coef: float = 1.0
    entropy_mask_quantile: float = 0.0
    entropy_mask_normaliser: MaskNormaliser = "kept"
    aggregation: Aggregation = "seq_mean_token_mean"
    kl_coef: float = 0.04
    kl_estimator: KLEstimator = "k3"
    entropy_coef: float = 0.0

    @property
    def advantages_read_old_policy(self) -> bool:
        """Do the advantages read the old policy: its log-probs (Miner's intrinsic reward) or its entropies (the
        entropy advantage)? The other axes need the old policy only in the loss ratio."""
        return self.intrinsic or self.entropy_adv_alpha > 0 or self.ucas != "none"

    @property
    def advantages_read_logits(self) -> bool:
        """Do the advantages read the old policy's logits beyond the log-probs (``LogitStats``)? UCAS does."""
        return self.ucas != "none"

    @property
    def advantages_read_old_distribution(self) -> bool:
        """Do the advantages read more of the old policy than the log-probs of the sampled tokens: its entropies (the
        entropy advantage) or its logits (UCAS)? Only a forward of the old policy gives those; Miner reads the
        log-probs alone, which the sampler has already computed (``rollout.old_logp_from_sampler``)."""
        return self.entropy_adv_alpha > 0 or self.advantages_read_logits

    @property
    def loss_reads_micro_batch(self) -> bool:
        """Does a token's loss depend on the other rows of its micro-batch? Clip-Cov / KL-Cov covariances, the 80/20
        entropy quantile and BAPO's bounds are statistics of the micro-batch (as in verl, where each needs the
        current log-probs, which exist one micro-batch at a time)."""
        return self.cov_method != "none" or self.entropy_mask_quantile > 0 or self.clip_search != "none"

    def __post_init__(self) -> None:
        _check_types(self)
        _at_least(self, "overlong_buffer", 0.0, below=1.0)
        _at_least(self, "gamma", 0.0)
        _at_least(self, "calibration_lambda", 0.0, strict=True)
        _at_least(self, "correct_scale", 0.0)
        _at_least(self, "incorrect_scale", 0.0)
        _at_least(self, "entropy_adv_alpha", 0.0)
        _at_least(self, "entropy_adv_kappa", 0.0, strict=True)
        if not 0.0 <= self.clip_low <= 1.0:  # 1: no lower bound (Clip-Cov's runs)
            raise ValueError(f"Algorithm.clip_low={self.clip_low!r} must be in [0, 1]")
        _at_least(self, "clip_high", 0.0)
        if self.dual_clip is not None and not self.dual_clip > 1.0:
            raise ValueError(f"Algorithm.dual_clip={self.dual_clip!r} must be > 1 (or None to switch it off)")
        _at_least(self, "bapo_low_step", 0.0)
        _at_least(self, "bapo_high_step", 0.0)
        _at_least(self, "bapo_target", 0.0)
        if self.clip_search == "bapo":
            if self.ratio_level != "token" or self.cov_method != "none":
                raise ValueError(
                    "Algorithm.clip_search='bapo' needs ratio_level='token' and cov_method='none' (BAPO clips the "
                    f"token ratios of PPO's surrogate; got {self.ratio_level!r}, {self.cov_method!r})"
                )
            if not (1.0 - self.clip_low <= self.bapo_low_max <= 1.0 and self.bapo_high_max >= 1.0 + self.clip_high):
                raise ValueError(
                    f"Algorithm.bapo_low_max={self.bapo_low_max!r} / bapo_high_max={self.bapo_high_max!r}: BAPO raises "
                    f"the bounds from 1 - clip_low = {1.0 - self.clip_low:g} up to bapo_low_max <= 1 and from "
                    f"1 + clip_high = {1.0 + self.clip_high:g} up to bapo_high_max"
                )
        if self.ucas != "none" and (self.advantage != "group_zscore" or self.intrinsic):
            raise ValueError(
                f"Algorithm.ucas={self.ucas!r} shapes GRPO's group z-score: it needs advantage='group_zscore' "
                f"(got {self.advantage!r}) and intrinsic=False"
            )
        _at_least(self, "clip_cov_ratio", 0.0, strict=True, below=1.0)
        _at_least(self, "kl_cov_ratio", 0.0, strict=True, below=1.0)
        _at_least(self, "kl_cov_coef", 0.0)
        if not self.clip_cov_low < self.clip_cov_high:
            raise ValueError(
                f"Algorithm.clip_cov_low={self.clip_cov_low!r} must be below clip_cov_high={self.clip_cov_high!r}"
            )
        _at_least(self, "entropy_mask_quantile", 0.0, below=1.0)
        _at_least(self, "kl_coef", 0.0)
        _at_least(self, "entropy_coef", 0.0)
        if self.intrinsic and self.reward != "binary":
            raise ValueError(
                f"Algorithm.reward={self.reward!r} with intrinsic=True: Miner needs 0/1 rewards (reward='binary'), "
                "since it tells all-correct from all-wrong groups by the reward value"
            )
        if self.intrinsic and self.overlong_buffer > 0:
            raise ValueError(
                f"Algorithm.overlong_buffer={self.overlong_buffer!r} with intrinsic=True: overlong shaping makes "
                "rewards other than 0/1, which Miner cannot group; set overlong_buffer=0"
            )


def _check_types(algo: Algorithm) -> None:
    """Each field's value must belong to its annotation: a listed literal, a bool, a real number (or None)."""
    hints = get_type_hints(Algorithm)
    for field in dataclasses.fields(Algorithm):
        value, hint = getattr(algo, field.name), hints[field.name]
        if get_origin(hint) is Literal:
            valid = get_args(hint)
            if value not in valid:
                raise ValueError(f"Algorithm.{field.name}={value!r} is not valid; choose one of: {', '.join(valid)}")
        elif hint is bool:
            if not isinstance(value, bool):
                raise ValueError(f"Algorithm.{field.name}={value!r} must be a bool (True or False)")
        else:  # float or float | None
            if value is None and type(None) in get_args(hint):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"Algorithm.{field.name}={value!r} must be a finite number")


def _at_least(algo: Algorithm, name: str, low: float, strict: bool = False, below: float | None = None) -> None:
    value = getattr(algo, name)
    if (value <= low if strict else value < low) or (below is not None and value >= below):
        bound = f"{'>' if strict else '>='} {low}" + ("" if below is None else f" and < {below}")
        raise ValueError(f"Algorithm.{name}={value!r} must be {bound}")


# Dual clip (Ye et al. 2020) as each reference ran it: verl's vanilla PPO loss always applies it, c = 3 by default
# (the Miner authors' runs of GRPO, REINFORCE++-baseline, the entropy baselines, UCAS and Miner) and 10 in the DAPO
# and 80/20 recipes; BAPO's loss applies 3. verl's GSPO, Clip-Cov and KL-Cov losses have no dual clip, nor has
# Dr. GRPO's (the authors' oat code).
DAPO = Algorithm(
    reward="signed",
    overlong_buffer=0.2,
    drop_uniform_groups=True,
    clip_high=0.28,
    dual_clip=10.0,
    aggregation="token_mean",
    kl_coef=0.0,
)

ALGORITHMS: dict[str, Algorithm] = {
    # DeepSeekMath (2402.03300): group z-score, PPO clip 0.2, seq-mean-token-mean, k3 KL beta 0.04
    # departs from the paper: dual clip 3, as verl's vanilla loss (and so the Miner authors' GRPO) runs it
    "grpo": Algorithm(),
    # Dr. GRPO (2503.20783): no std division, constant normaliser (num seqs x max new tokens), no KL, no dual clip
    "dr_grpo": Algorithm(advantage="group_center", aggregation="seq_mean_token_sum_norm", kl_coef=0.0, dual_clip=None),
    # DAPO (2503.14476): clip-higher, token-mean, dynamic sampling on correctness, +-1 rewards, overlong shaping,
    # no KL; dual clip 10 (verl's DAPO recipe)
    "dapo": DAPO,
    # REINFORCE++-baseline (2501.03262): group centring, then whitening over the batch's tokens; k2 KL loss
    "reinforce_pp_baseline": Algorithm(advantage="group_center_whiten", kl_coef=0.001, kl_estimator="k2"),
    # GSPO (2507.18071): length-normalised sequence ratio, clip 3e-4 / 4e-4, no KL, no dual clip
    "gspo": Algorithm(ratio_level="sequence", clip_low=3e-4, clip_high=4e-4, kl_coef=0.0, dual_clip=None),
    # entropy bonus baseline: loss - 1e-3 * aggregate(entropy)
    "entropy_bonus": Algorithm(entropy_coef=1e-3),
    # Cheng et al. (2506.14758): A += min(0.4 * H_old, |A| / 2)
    "entropy_adv": Algorithm(entropy_adv_alpha=0.4, entropy_adv_kappa=2.0),
    # Cui et al. (2505.22617): detach a random 2e-4 of the tokens with 1 < Cov < 5; token-mean, no KL. Their launch
    # script sets clip_ratio_low = clip_ratio_high = 1 (ratio bounds [0, 2]: only the chosen tokens are cut) and
    # clip_ratio_c = 10, which verl's clip_cov loss never reads (no dual clip).
    # departs from the authors' runs: their dynamic sampling (acc), +-1 rewards and 8 mini-batches per batch are
    # not carried (Clip-Cov / KL-Cov are compared as loss changes on the shared setting)
    "clip_cov": Algorithm(
        cov_method="clip_cov", clip_low=1.0, clip_high=1.0, dual_clip=None, aggregation="token_mean", kl_coef=0.0
    ),
    # Cui et al. (2505.22617): |logp - old_logp| penalty (coef 1) on the top 2e-3 tokens by Cov; token-mean, no KL,
    # no clip and no dual clip (verl's kl_cov loss); departs from the authors' runs as clip_cov does
    "kl_cov": Algorithm(cov_method="kl_cov", dual_clip=None, aggregation="token_mean", kl_coef=0.0),
    # Wang et al. (2506.01939), "80/20": DAPO with policy gradient only on tokens at or above the 0.8 entropy
    # quantile, the surrogate averaged over those kept tokens (the authors' code; the paper's eq. divides by all)
    "high_entropy_mask": dataclasses.replace(DAPO, entropy_mask_quantile=0.8, entropy_mask_normaliser="kept"),
    # BAPO (2510.18927): ratio bounds searched per micro-batch, [0.8 -> 0.95] x [1.2 -> 2.0] in steps of 0.05 / 0.1,
    # until positive / negative contributions >= 0.5; dual clip 3, token-mean, no KL; 2 epochs x 4 mini-batches
    # (PRESET_OPTIM) as the run Miner compares against, bapo_0.8_0.95_1.2_2.0_target_0.5
    # departs from the authors' script: its lr 1e-6, weight decay 0.1 and warm-up ratio 0.1 are optimiser settings
    # (shared by a sweep), not part of the preset
    "bapo": Algorithm(clip_search="bapo", aggregation="token_mean", kl_coef=0.0),
    # UCAS (2510.10649) as Miner's comparison ran it (Miner's baselines/core_algos.py): self-certainty-weighted
    # group z-score minus 0.01 x the row-min-max of the sampled logits; Miner's loss settings (token-mean, KL 0.001)
    "ucas": Algorithm(ucas="miner_port", aggregation="token_mean", kl_coef=0.001),
    # Miner (2601.04731): intrinsic advantage for all-correct groups, focal credit, adaptive calibration;
    # PPO clip 0.2, token-mean, k3 KL 0.001, dual clip 3 (verl)
    "miner": Algorithm(aggregation="token_mean", kl_coef=0.001, intrinsic=True, calibration=True),
}

# The optimiser schedule a preset's authors ran where it is not one optimiser step per batch: (epochs, mini-batches).
# ``training.config.with_algorithm`` and ``--algorithm=NAME`` set ``optim.epochs`` / ``optim.mini_batches`` from it
# (later ``--optim.*`` overrides win). Only BAPO needs one: on-policy (ratio 1) it is GRPO with dual clip.
PRESET_OPTIM: dict[str, tuple[int, int]] = {"bapo": (2, 4)}


def get_algorithm(name: str, **overrides: object) -> Algorithm:
    """The preset ``name`` with ``overrides`` applied (each one field); unknown names or fields are a ValueError."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm preset {name!r}; choose one of: {', '.join(ALGORITHMS)}")
    fields = [field.name for field in dataclasses.fields(Algorithm)]
    for key in overrides:
        if key not in fields:
            raise ValueError(f"unknown Algorithm field {key!r}; valid fields: {', '.join(fields)}")
    return dataclasses.replace(ALGORITHMS[name], **overrides)
