"""The trainer's side of a step: old and reference log-probs, then epochs x mini-batches x micro-batches of AdamW.

Every rank holds the whole step batch. Log-probs are computed on each rank's contiguous share of the rows and
all-gathered. Each mini-batch (one optimiser step) counts its ``Normalizers`` over all of its rows, i.e. over
every micro-batch on every rank, so the micro-batch losses are shares that sum to the mini-batch loss whatever the
micro-batch size or world size; each rank then trains on its share of the mini-batch's rows.
"""

import contextlib
import math
from collections import defaultdict
from collections.abc import Iterator
from typing import assert_never

import torch
from torch import Tensor, nn

from algorithms import LogitStats, Normalizers, policy_loss
from training.batch import StepBatch, derive_seed, pad_columns, sequence_logp
from training.config import RunConfig, Schedule
from training.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    grad_norm_and_clip,
    gradient_sync,
    loss_scale,
)


class TrainingDiverged(RuntimeError):
    """The step loss or gradient norm is not finite; raised before the optimiser step, so no weight is touched."""


def rank_share(rows: list[int], info: DistInfo) -> list[int]:
    """This rank's contiguous share of ``rows`` (their count is a multiple of the world size)."""
    assert len(rows) % info.world_size == 0, f"{len(rows)} rows do not split over {info.world_size} ranks"
    share = len(rows) // info.world_size
    return rows[info.rank * share : (info.rank + 1) * share]


def micro_batches(rows: list[int], size: int) -> list[list[int]]:
    return [rows[start : start + size] for start in range(0, len(rows), size)]


def padded_tokens(rows: list[int], batch: StepBatch) -> int:
    """Positions ``sequence_logp`` runs for these rows together: rows x (longest prompt + longest response)."""
    if not rows:
        return 0
    prompt = max(len(batch.prompt_ids_B[r]) for r in rows)
    response = max(max(int(batch.lengths_B[r]) for r in rows), 1)
    return len(rows) * (prompt + response)


def token_budget_micro_batches(rows: list[int], batch: StepBatch, max_tokens: int) -> list[list[int]]:
    """``rows`` cut, in order, into consecutive micro-batches of at most ``max_tokens`` padded positions each
    (``padded_tokens``; verl's dynamic batch size). A row longer than the budget on its own is a micro-batch alone.
    After ``longest_first`` the first row of each micro-batch sets its width, so short rows travel many at a time."""
    out: list[list[int]] = []
    for row in rows:
        if out and padded_tokens(out[-1] + [row], batch) <= max_tokens:
            out[-1].append(row)
        else:
            out.append([row])
    return out


def split_to_count(micro: list[list[int]], count: int, batch: StepBatch) -> list[list[int]]:
    """``micro`` with its largest micro-batches (most padded positions, at least two rows) halved until there are
    ``count`` of them; halves keep the row order and stay within any token budget the whole one met."""
    micro = [list(m) for m in micro]
    while len(micro) < count:
        splittable = [i for i, m in enumerate(micro) if len(m) > 1]
        assert splittable, f"cannot split {len(micro)} micro-batches of single rows into {count}"
        i = max(splittable, key=lambda i: padded_tokens(micro[i], batch))
        half = (len(micro[i]) + 1) // 2
        micro[i : i + 1] = [micro[i][:half], micro[i][half:]]
    return micro


def plan_micro_batches(rows: list[int], batch: StepBatch, config: RunConfig, info: DistInfo) -> list[list[int]]:
    """This rank's ``rows`` (already in their order) as micro-batches: ``optim.micro_batch_size`` rows each, or
    packed under the token budget ``optim.max_tokens_per_micro_batch``. Every rank gets the same number of them
    (the most any rank needs; the others halve their largest ones): under FSDP2 each forward and backward is a
    collective, so ranks must run as many. All ranks must call this together when a budget is set."""
    budget = config.optim.max_tokens_per_micro_batch
    if budget is None:  # equal row shares give every rank the same count
        return micro_batches(rows, config.optim.micro_batch_size)
    packed = token_budget_micro_batches(rows, batch, budget)
    count = max(all_gather_objects(len(packed), info))
    return split_to_count(packed, count, batch)


def longest_first(rows: list[int], batch: StepBatch) -> list[int]:
    """``rows`` by unpadded length (prompt + response tokens), longest first, ties in their order: consecutive
    micro-batches then hold rows of similar length, and each is padded only to its own longest row (about 24% of
    the positions of a tiny-task batch are padding in one block, 9% in length-sorted micro-batches of 32)."""
    return sorted(rows, key=lambda r: -(len(batch.prompt_ids_B[r]) + int(batch.lengths_B[r])))


def micro_batch_invariant(config: RunConfig) -> bool:
    """Is the step loss independent of which rows share a micro-batch? Clip-Cov / KL-Cov covariances, the 80/20
    entropy quantile and BAPO's bounds are statistics of the micro-batch (``Algorithm.loss_reads_micro_batch``), so
    for them the rows keep their order."""
    return not config.algorithm.loss_reads_micro_batch


def zero_advantage_rows_skip_backward(config: RunConfig) -> bool:
    """May rows whose advantage is zero on every token skip the backward? Their gradient is exactly zero when the
    advantage-weighted surrogate is the only per-token term (no KL to the reference, no entropy bonus) and a row's
    loss does not depend on which rows share its micro-batch (``micro_batch_invariant``). They still get a no-grad
    forward: their (zero) loss terms and their metrics (entropy, clip fractions) count as before."""
    algo = config.algorithm
    exact = algo.kl_coef == 0 and algo.entropy_coef == 0 and micro_batch_invariant(config)
    return config.optim.skip_zero_advantage_backward and exact


def split_by_advantage(
    rows: list[int], adv_BT: Tensor, mask_BT: Tensor, world_size: int
) -> tuple[list[int], list[int]]:
    """(backward rows, forward-only rows): rows with a non-zero advantage on some trained token, then the others.

    Forward-only rows move over (in order) until the backward count is a positive multiple of ``world_size``: every
    rank then runs as many forwards and backwards as the others (FSDP2 and DDP collectives), and a step with no
    non-zero advantage still ends with zero gradients, not missing ones (AdamW skips a parameter without a
    gradient but moves one with a zero gradient by its momentum)."""
    live_B = ((adv_BT[rows] != 0) & mask_BT[rows]).any(dim=-1).tolist()
    backward = [r for r, live in zip(rows, live_B, strict=True) if live]
    forward_only = [r for r, live in zip(rows, live_B, strict=True) if not live]
    move = (-len(backward)) % world_size or (world_size if not backward else 0)
    return backward + forward_only[:move], forward_only[move:]


@torch.no_grad()
def batch_logps(
    model: nn.Module, batch: StepBatch, config: RunConfig, info: DistInfo, pad_id: int, logit_stats: bool = False
) -> tuple[Tensor, Tensor, LogitStats | None]:
    """(logp_BT, entropy_BT, stats) of the whole batch under ``model`` at the rollout temperature, identical on all
    ranks; ``stats`` are the ``LogitStats`` (UCAS) when ``logit_stats``, else None."""
    B, T = batch.tokens_BT.shape
    dtype = getattr(torch, config.model.compute_dtype)
    rows = rank_share(list(range(B)), info)
    order = longest_first(rows, batch)  # rows are independent here: any grouping gives the same values (to rounding)
    parts = []
    for micro in plan_micro_batches(order, batch, config, info):
        sub = batch.select(micro)
        out = sequence_logp(
            model, sub.prompt_ids_B, sub.tokens_BT, sub.mask_BT, config.rollout.temperature, pad_id, dtype, logit_stats,
            chunk_tokens=config.model.logp_chunk_tokens,
        )  # fmt: skip
        tensors = out[:2] if not logit_stats else (*out[:2], out[2].logit_BT, out[2].certainty_BT)
        parts.append(tuple(pad_columns(x_BT.cpu(), T) for x_BT in tensors))
    back = torch.tensor(order).argsort()  # back to this rank's row order
    mine = tuple(torch.cat([p[k] for p in parts])[back] for k in range(len(parts[0])))
    gathered = all_gather_objects(mine, info)
    logp_BT, entropy_BT, *stats = (torch.cat([g[k] for g in gathered]) for k in range(len(mine)))
    return logp_BT, entropy_BT, LogitStats(*stats) if logit_stats else None


def update_policy(
    trainer: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: StepBatch,
    old_logp_BT: Tensor | None,
    ref_logp_BT: Tensor | None,
    adv_BT: Tensor,
    config: RunConfig,
    info: DistInfo,
    step: int,
    pad_id: int,
) -> dict[str, float]:
    """Run ``epochs x mini_batches`` optimiser steps on the batch; returns policy/* and optim/* metrics.

    ``old_logp_BT`` None means the old policy is the trained one (``RunConfig.old_policy_source`` "trained"): each
    micro-batch's own log-probs, detached, stand in for it.

    policy/* are the mini-batch values (micro-batch shares summed over micro-batches and ranks) averaged over the
    optimiser steps; optim/grad_norm is the pre-clipping global norm, averaged likewise; optim/lr the last lr used.
    """
    B, _T = batch.tokens_BT.shape
    epochs, mini_batches = config.optim.epochs, config.optim.mini_batches
    rows_per_mini_batch = B // mini_batches
    dtype = getattr(torch, config.model.compute_dtype)
    totals: dict[str, float] = defaultdict(float)
    lr = scheduler.get_last_lr()[0]
    with training_mode(trainer):
        for epoch in range(epochs):
            if epochs * mini_batches > 1:  # same seeded shuffle on every rank
                generator = torch.Generator().manual_seed(derive_seed(config.seed, step, "shuffle", epoch))
                order = torch.randperm(B, generator=generator).tolist()
            else:
                order = list(range(B))
            for mini in range(mini_batches):
                rows = order[mini * rows_per_mini_batch : (mini + 1) * rows_per_mini_batch]
                norm = Normalizers.count(batch.mask_BT[rows], config.rollout.max_new_tokens)
                generator = torch.Generator().manual_seed(derive_seed(config.seed, step, epoch, mini, info.rank))
                backward_rows, forward_rows = (
                    split_by_advantage(rows, adv_BT, batch.mask_BT, info.world_size)
                    if zero_advantage_rows_skip_backward(config)
                    else (rows, [])
                )
                parts = []
                for share, backward in ((backward_rows, True), (forward_rows, False)):
                    mine = rank_share(share, info)
                    mine = longest_first(mine, batch) if micro_batch_invariant(config) else mine
                    parts += [(micro, backward) for micro in plan_micro_batches(mine, batch, config, info)]
                last_backward = sum(backward for _, backward in parts) - 1
                sums: dict[str, float] = defaultdict(float)
                for index, (micro, backward) in enumerate(parts):
                    sub = batch.select(micro)
                    width = sub.tokens_BT.shape[1]
                    sync = gradient_sync(trainer, enabled=index == last_backward)
                    with sync, torch.set_grad_enabled(backward):
                        logp_BT, entropy_BT = sequence_logp(
                            trainer, sub.prompt_ids_B, sub.tokens_BT, sub.mask_BT, config.rollout.temperature, pad_id,
                            dtype, chunk_tokens=config.model.logp_chunk_tokens,
                        )  # fmt: skip
                        device = logp_BT.device
                        old_BT = logp_BT.detach() if old_logp_BT is None else old_logp_BT[micro, :width].to(device)
                        out = policy_loss(
                            config.algorithm,
                            logp_BT,
                            old_BT,
                            adv_BT[micro, :width].to(device),
                            sub.mask_BT.to(device),
                            norm,
                            ref_logp_BT=None if ref_logp_BT is None else ref_logp_BT[micro, :width].to(device),
                            entropy_BT=entropy_BT,
                            generator=generator,
                            reduce=lambda sums: all_reduce_sum(sums, info),  # BAPO: bounds chosen alike on every rank
                        )
                        loss = out.loss
                        if config.fault_nan_at_step == step:  # testing only: a loss that has become NaN
                            loss = loss * float("nan")
                        if backward:
                            (loss * loss_scale(info)).backward()
                    sums["policy/loss"] += loss.item()
                    for key, value in out.metrics.items():
                        sums[f"policy/{key}"] += value.item()
                sums = all_reduce_sum(dict(sums), info)
                grad_norm = grad_norm_and_clip(trainer, config.optim.grad_clip).item()
                if not (math.isfinite(sums["policy/loss"]) and math.isfinite(grad_norm)):
                    raise TrainingDiverged(
                        f"step {step} (epoch {epoch}, mini-batch {mini}): policy/loss={sums['policy/loss']} "
                        f"optim/grad_norm={grad_norm} is not finite; stopped before the optimiser step"
                    )
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                for key, value in sums.items():
                    totals[key] += value
                totals["optim/grad_norm"] += grad_norm
    count = epochs * mini_batches
    return {key: value / count for key, value in totals.items()} | {"optim/lr": lr}


@contextlib.contextmanager
def training_mode(model: nn.Module) -> Iterator[None]:
    """``model.train()`` for the update's forwards and backwards, ``model.eval()`` again afterwards (also on error).

    The policy is in eval mode everywhere else: rollout, old and reference log-probs, evaluation. Qwen-style models
    have no dropout (attention_dropout = 0), so the mode changes no value; it matters because transformers
    recomputes decoder layers in the backward (``model.gradient_checkpointing``) only while ``module.training`` is
    True, and ``from_pretrained`` returns a model in eval mode, where checkpointing silently does nothing."""
    model.train()
    try:
        yield
    finally:
        model.eval()


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: Schedule, min_lr_ratio: float) -> float:
    """Linear warm-up over ``warmup_steps`` optimiser steps, then constant or cosine down to ``min_lr_ratio``.

    factor(s) = (s+1)/warmup for s < warmup; constant: 1; cosine: m + (1-m) * (1 + cos(pi * p)) / 2 with
    p = (s - warmup) / (total - warmup) clamped to [0, 1]."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    match schedule:
        case "constant":
            return 1.0
        case "cosine":
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        case _:
            assert_never(schedule)
