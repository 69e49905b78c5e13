"""One step's rollouts: generate, grade, shape rewards, filter groups, refill (dynamic sampling), count the cost.

Every round draws the next P prompts of the data stream; rollout group g (``rollout.ranks_per_engine``
consecutive ranks sharing one tensor-parallel vLLM engine; one rank per group otherwise) generates its P / groups
of them with one seed, each member grades its slice of the group's prompts with the evaluation grader, and the
rounds' rows are all-gathered so every rank holds the same batch, every prompt once. With a
group filter on (DAPO's dynamic sampling) rounds repeat until P informative groups are collected or
``rollout.max_extra_rounds`` extra rounds are spent. Everything generated and not trained on is counted as
discarded: filtered groups, groups beyond P, and groups trimmed so the batch splits evenly over mini-batches and
ranks.
"""

import dataclasses
import time
from dataclasses import dataclass

import torch

from algorithms import Algorithm, group_filter, overlong_shaped, shape_rewards
from evals import Problem, grade_many
from rollout import SamplingParams
from rollout.types import Engine
from training.batch import StepBatch, concat, data_indices, derive_seed
from training.config import RunConfig
from training.distributed import DistInfo, all_gather_objects, rollout_group


@dataclass(frozen=True)
class Collected:
    batch: StepBatch | None  # the rows to train on; None when no group survived
    data_position: int
    generated_tokens: int  # every token generated this step, on all ranks, discarded ones included
    discarded_tokens: int
    metrics: dict[str, float]  # rollout/* over every generation of the step (all rounds, all ranks)
    time_rollout: float
    time_grade: float


def collect(
    engine: Engine,
    problems: list[Problem],
    prompts: list[str],
    config: RunConfig,
    step: int,
    data_position: int,
    info: DistInfo,
    pad_id: int,
) -> Collected:
    """Generate until ``prompts_per_step`` groups pass the algorithm's group filter (or the round cap is hit)."""
    P, G = config.rollout.prompts_per_step, config.rollout.group_size
    group = rollout_group(info, config.rollout.ranks_per_engine)
    if P % group.count:
        raise ValueError(f"rollout.prompts_per_step={P} must be divisible by the {group.count} rollout groups")
    share = P // group.count
    mine = group.my_part(share)  # the group's prompts this rank grades and contributes
    rounds, kept, kept_groups = [], [], 0
    time_rollout = time_grade = 0.0
    for round_index in range(1 + config.rollout.max_extra_rounds):
        indices = data_indices(config.seed, data_position, P, len(problems))
        data_position += P
        ours = indices[group.index * share : (group.index + 1) * share]
        params = SamplingParams(
            n=G,
            temperature=config.rollout.temperature,
            top_p=config.rollout.top_p,
            max_new_tokens=config.rollout.max_new_tokens,
            seed=derive_seed(config.seed, step, round_index, group.index),
        )
        start = time.perf_counter()
        out = engine.generate([prompts[i] for i in ours], params)
        time_rollout += time.perf_counter() - start
        start = time.perf_counter()
        rows = list(range(mine.start * G, mine.stop * G))
        problem_B = [ours[row // G] for row in rows]
        grades = grade_many(
            [(out.texts[row], problems[i].answer) for row, i in zip(rows, problem_B, strict=True)],
            workers=config.rollout.grade_workers,
            timeout_s=config.rollout.grade_timeout_s,
        )
        correct_B = torch.tensor([g.correct for g in grades], dtype=torch.bool)
        rewards_B = shape_rewards(config.algorithm, correct_B, out.lengths_B[rows], config.rollout.max_new_tokens)
        time_grade += time.perf_counter() - start
        unset_B = torch.zeros(len(out.texts))  # grades of the rows other members grade; select drops them
        part = StepBatch.from_rollout(out, [ours[b // G] for b in range(len(out.texts))], unset_B.bool(), unset_B)
        part = dataclasses.replace(part.select(rows), correct_B=correct_B, rewards_B=rewards_B)
        batch = concat(all_gather_objects(part, info), pad_id)
        rounds.append(batch)
        # departs from verl's DAPO recipe: at most rollout.max_extra_rounds refills (theirs: max_num_gen_batches)
        keep_P = group_filter(config.algorithm, batch.correct_B, batch.rewards_B, G)
        rows = [p * G + g for p in keep_P.nonzero().flatten().tolist() for g in range(G)]
        if rows:
            kept.append(batch.select(rows))
            kept_groups += len(rows) // G
        if kept_groups >= P:
            break
    generated = sum(b.num_tokens for b in rounds)
    # the batch must split evenly into mini-batches and, within each, over the ranks
    groups = min(kept_groups, P)
    while groups and (groups * G) % (config.optim.mini_batches * info.world_size):
        groups -= 1
    train_batch = concat(kept, pad_id).select(list(range(groups * G))) if groups else None
    trained = train_batch.num_tokens if train_batch is not None else 0
    metrics = rollout_metrics(rounds, G, config.algorithm, config.rollout.max_new_tokens) | {
        "rollout/rounds": float(len(rounds)),
        "rollout/groups_kept": float(groups),
    }
    return Collected(train_batch, data_position, generated, generated - trained, metrics, time_rollout, time_grade)


def rollout_metrics(
    batches: list[StepBatch], group_size: int, algo: Algorithm, max_new_tokens: int
) -> dict[str, float]:
    """rollout/* over the rows of ``batches`` (per-row vectors only: no token tensor is copied). Group kinds are by
    correctness: mixed, all correct, all wrong; ``overlong_frac`` is the share that DAPO's overlong shaping cut."""
    correct_B = torch.cat([b.correct_B for b in batches])
    num_correct_P = correct_B.view(-1, group_size).sum(-1)
    lengths_B = torch.cat([b.lengths_B for b in batches]).float()
    truncated_B = torch.cat([b.truncated_B for b in batches])
    return {
        "rollout/reward_mean": torch.cat([b.rewards_B for b in batches]).mean().item(),
        "rollout/acc_mean": correct_B.float().mean().item(),
        "rollout/frac_mixed": ((num_correct_P > 0) & (num_correct_P < group_size)).float().mean().item(),
        "rollout/frac_all_correct": (num_correct_P == group_size).float().mean().item(),
        "rollout/frac_all_wrong": (num_correct_P == 0).float().mean().item(),
        "rollout/response_len_mean": lengths_B.mean().item(),
        "rollout/response_len_max": lengths_B.max().item(),
        "rollout/truncated_frac": truncated_B.float().mean().item(),
        "rollout/overlong_frac": overlong_shaped(algo, lengths_B, max_new_tokens).float().mean().item(),
    }
