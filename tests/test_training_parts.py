"""The loop's parts on their own: data stream, lr schedule, log cut-back, checkpoints, trainer log-probs, updates."""

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from algorithms import compute_advantages
from rollout import SamplingParams, TransformersEngine
from training import runlog
from training.batch import StepBatch, concat, data_indices, derive_seed, sequence_logp
from training.checkpoint import (
    TrainerState,
    best_checkpoint,
    has_weights,
    latest_checkpoint,
    list_checkpoints,
    restore_training_state,
    save_checkpoint,
)
from training.checkpoint import main as checkpoint_main
from training.config import OptimConfig, RolloutConfig, tiny, with_algorithm
from training.distributed import init_distributed
from training.tiny import random_tiny_model
from training.update import (
    lr_factor,
    split_by_advantage,
    update_policy,
    zero_advantage_rows_skip_backward,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_tiny_model(tmp_path_factory.mktemp("model"), seed=0)


def _load(model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def test_data_stream_is_a_seeded_permutation_per_epoch():
    first = data_indices(seed=1, position=0, count=10, num_problems=10)
    assert sorted(first) == list(range(10))  # one epoch visits every problem once
    second = data_indices(seed=1, position=10, count=10, num_problems=10)
    assert sorted(second) == list(range(10)) and second != first  # the next epoch is reshuffled
    # a pure function of the position: resuming at 7 continues the same stream
    assert data_indices(1, 0, 7, 10) + data_indices(1, 7, 13, 10) == first + second
    assert data_indices(2, 0, 10, 10) != first


def test_derived_seeds_differ_per_part_and_are_stable():
    seeds = {derive_seed(0, step, round_, rank) for step in range(5) for round_ in range(3) for rank in range(2)}
    assert len(seeds) == 30 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)


@pytest.mark.parametrize(
    "step, schedule, want",
    [
        (0, "constant", 0.25),  # warm-up: (0+1)/4
        (3, "constant", 1.0),  # (3+1)/4
        (10, "constant", 1.0),
        (4, "cosine", 1.0),  # progress 0: 0.1 + 0.9 * (1 + cos 0) / 2
        (9, "cosine", 0.55),  # progress (9-4)/(14-4) = 0.5: 0.1 + 0.9 * (1 + 0) / 2
        (14, "cosine", 0.1),  # progress 1: the floor
        (20, "cosine", 0.1),  # clamped past the end
    ],
)
def test_lr_factor_by_hand(step: int, schedule: str, want: float):
    assert lr_factor(step, warmup_steps=4, total_steps=14, schedule=schedule, min_lr_ratio=0.1) == pytest.approx(
        want, abs=1e-12
    )


def test_cut_back_keeps_rows_up_to_the_checkpoint(tmp_path: Path):
    (tmp_path / runlog.METRICS).write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in (1, 2, 3)) + '{"st')
    rows = [{"step": 2, "split": "dev"}, {"step": 4, "split": "dev"}, {"step": 2, "split": "test"}]
    (tmp_path / runlog.EVAL).write_text("".join(json.dumps(r) + "\n" for r in rows))
    runlog.cut_back(tmp_path, step=2)
    assert runlog.read_jsonl(tmp_path / runlog.METRICS) == [{"step": 1, "x": 1}, {"step": 2, "x": 2}]
    assert runlog.read_jsonl(tmp_path / runlog.EVAL) == [{"step": 2, "split": "dev"}]


def test_non_finite_metrics_are_written_as_null():
    assert json.loads(runlog.dumps({"a": float("nan"), "b": [float("inf"), 1.0]})) == {"a": None, "b": [None, 1.0]}


def test_checkpoint_restores_optimizer_scheduler_and_rng_and_keeps_last_and_best(model_dir: Path, tmp_path: Path):
    info = init_distributed()
    model = _load(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for step in range(1, 5):
        model(input_ids=torch.tensor([[3, 4, 5]])).logits.sum().backward()
        optimizer.step(), scheduler.step(), optimizer.zero_grad()
        state = TrainerState(step, 10 * step, 0, 0, 2, 0.5, 1.0, 1)  # step 2 stays the best
        random.seed(step), np.random.seed(step), torch.manual_seed(step)
        export = torch.float32 if step in (2, 4) else None  # the trainer exports the best and the final one
        save_checkpoint(tmp_path, state, model, tokenizer, optimizer, scheduler, info, 1, export_dtype=export)
    # keep_last=1 plus the best: steps 2 and 4 remain, and no temporary folder is left behind
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000004"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best", "step_00000002", "step_00000004"]
    assert best_checkpoint(tmp_path).name == "step_00000002" and has_weights(best_checkpoint(tmp_path))
    expected = (random.random(), np.random.rand(), torch.rand(1))
    saved_optimizer = optimizer.state_dict()

    exported = AutoModelForCausalLM.from_pretrained(latest_checkpoint(tmp_path), dtype=torch.float32)
    fresh = random_tiny_model(tmp_path / "other", seed=7)  # other weights: the checkpoint's state must replace them
    fresh = _load(fresh)
    optimizer2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    scheduler2 = torch.optim.lr_scheduler.LambdaLR(optimizer2, lambda s: 1.0 / (s + 1))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    state = restore_training_state(latest_checkpoint(tmp_path), fresh, optimizer2, scheduler2, info)
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value) and torch.equal(exported.state_dict()[name], value), name
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight  # still tied
    assert state == TrainerState(4, 40, 0, 0, 2, 0.5, 1.0, 1)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    assert scheduler2.last_epoch == 4 and scheduler2.get_last_lr() == scheduler.get_last_lr()
    for index, param_state in saved_optimizer["state"].items():
        for key, value in param_state.items():
            assert torch.equal(optimizer2.state_dict()["state"][index][key], value)


def test_a_checkpoint_without_export_is_exported_on_demand(model_dir: Path, tmp_path: Path):
    info = init_distributed()
    model = _load(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    state = TrainerState(1, 0, 0, 0, None, None, 0.0, 1)
    folder = save_checkpoint(tmp_path, state, model, AutoTokenizer.from_pretrained(model_dir), optimizer, scheduler,
                             info, 2, export_dtype=None)  # fmt: skip
    assert not has_weights(folder)
    # 0.8 M parameters: 3.2 MB of float32 weights (tied embedding once), no optimiser state before the first update
    size = sum(p.stat().st_size for p in (folder / "state").iterdir())
    n = sum(p.numel() for p in model.parameters())
    assert 4 * n <= size < 4 * n + 100_000
    # saved before the first update: a resume keeps the fresh optimiser (a zero-lr step would count in AdamW)
    fresh = _load(random_tiny_model(tmp_path / "other", seed=7))
    optimizer2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    restore_training_state(
        folder, fresh, optimizer2, torch.optim.lr_scheduler.LambdaLR(optimizer2, lambda s: 1.0), info
    )
    assert not optimizer2.state and all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
    assert checkpoint_main(["export", str(folder), "--dtype", "bfloat16"]) == 0
    exported = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    for name, value in model.state_dict().items():
        assert torch.equal(exported.state_dict()[name], value.to(torch.bfloat16).float()), name
    assert checkpoint_main(["export", str(tmp_path)]) == 2  # not a checkpoint: one line, exit 2


def test_trainer_logp_equals_the_engines_behaviour_logp(model_dir: Path):
    """Left padding, position ids and the temperature are laid out as the engine sampled them."""
    torch.set_num_threads(1)
    model = _load(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    engine = TransformersEngine(model, tokenizer)
    params = SamplingParams(n=3, temperature=0.7, max_new_tokens=12, seed=1)
    out = engine.generate(["12+34\n", "7*8\n", "1\n"], params)
    prompt_ids_B = [ids for ids in out.prompt_ids for _ in range(3)]
    logp_BT, entropy_BT = sequence_logp(
        model, prompt_ids_B, out.tokens_BT, out.mask_BT, 0.7, tokenizer.pad_token_id, torch.float32
    )
    torch.testing.assert_close(logp_BT, out.logp_BT, atol=1e-5, rtol=0)
    assert (entropy_BT[out.mask_BT] > 0).all() and (entropy_BT[~out.mask_BT] == 0).all()


def _random_batch(model_dir: Path, P: int, G: int) -> StepBatch:
    """A rollout of the random model with alternating correctness, so every group is mixed."""
    model = _load(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    out = TransformersEngine(model, tokenizer).generate(
        [f"{i}+{i}\n" for i in range(P)], SamplingParams(n=G, temperature=1.0, max_new_tokens=10, seed=3)
    )
    correct_B = torch.arange(P * G) % 2 == 0
    return StepBatch.from_rollout(out, [p for p in range(P) for _ in range(G)], correct_B, correct_B.float())


@pytest.mark.parametrize("preset", ["grpo", "dapo", "dr_grpo"])
def test_update_is_invariant_to_the_micro_batch_size(model_dir: Path, preset: str):
    """One optimiser step over 8 rows: micro-batches of 1, 3 and 8 give the same weights (Normalizers per step)."""
    torch.set_num_threads(1)
    batch = _random_batch(model_dir, P=2, G=4)
    info = init_distributed()
    results = []
    for micro in (8, 3, 1):
        config = dataclasses.replace(
            with_algorithm(tiny(), preset, kl_coef=0.0),
            rollout=RolloutConfig(prompts_per_step=2, group_size=4, max_new_tokens=10),
            optim=OptimConfig(lr=1e-2, micro_batch_size=micro),
        )
        model = _load(model_dir)
        old_logp_BT, _ = sequence_logp(model, batch.prompt_ids_B, batch.tokens_BT, batch.mask_BT, 1.0, 0, torch.float32)
        old_logp_BT = old_logp_BT.detach() - 0.05 * batch.mask_BT  # ratios away from 1, so clipping matters
        adv_BT = (batch.rewards_B - 0.5)[:, None] * batch.mask_BT
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # linear in the gradient, unlike Adam's first step
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        metrics = update_policy(model, optimizer, scheduler, batch, old_logp_BT, None, adv_BT, config, info, 1, 0)
        results.append((metrics, model.state_dict()))
    for metrics, weights in results[1:]:
        for key in ("policy/loss", "policy/clip_frac_high", "optim/grad_norm"):
            assert metrics[key] == pytest.approx(results[0][0][key], abs=1e-6), key
        for name, value in weights.items():
            torch.testing.assert_close(value, results[0][1][name], atol=1e-6, rtol=0)


@pytest.mark.parametrize("preset", ["grpo", "gspo", "kl_cov", "dapo"])
def test_one_optimiser_step_needs_no_separate_old_policy_forward(model_dir: Path, preset: str):
    """epochs x mini-batches = 1: the trainer's own detached log-probs as the old policy (old_logp_BT=None) give the
    weights and metrics of an update against old log-probs from a separate no-grad forward of the same weights."""
    torch.set_num_threads(1)
    batch = _random_batch(model_dir, P=2, G=4)
    info = init_distributed()
    config = dataclasses.replace(
        with_algorithm(tiny(), preset, kl_coef=0.0),
        rollout=RolloutConfig(prompts_per_step=2, group_size=4, max_new_tokens=10),
        optim=OptimConfig(lr=1e-2, micro_batch_size=3),
    )
    assert config.old_policy_source == "trained"
    adv_BT = (batch.rewards_B - 0.5)[:, None] * batch.mask_BT
    results = []
    for separate in (True, False):
        model = _load(model_dir)
        old_logp_BT = None
        if separate:
            with torch.no_grad():
                old_logp_BT, _ = sequence_logp(
                    model, batch.prompt_ids_B, batch.tokens_BT, batch.mask_BT, 1.0, 0, torch.float32
                )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        metrics = update_policy(model, optimizer, scheduler, batch, old_logp_BT, None, adv_BT, config, info, 1, 0)
        results.append((metrics, model.state_dict()))
    (separate_metrics, separate_weights), (own_metrics, own_weights) = results
    assert own_metrics["policy/clip_frac_high"] == own_metrics["policy/clip_frac_low"] == 0.0
    for key in ("policy/loss", "optim/grad_norm"):
        assert own_metrics[key] == pytest.approx(separate_metrics[key], abs=1e-6), key
    for name, value in own_weights.items():
        torch.testing.assert_close(value, separate_weights[name], atol=1e-6, rtol=0)


def test_the_old_policy_forward_runs_only_when_something_reads_more_than_the_sampler_gives():
    base = dataclasses.replace(tiny(), optim=OptimConfig(epochs=1, mini_batches=1))
    recompute = dataclasses.replace(base, rollout=RolloutConfig(old_logp_from_sampler=False))
    several = [OptimConfig(epochs=2), OptimConfig(mini_batches=2)]  # later optimiser steps: the policy moved
    for config, want in [
        (with_algorithm(base, "grpo"), "trained"),  # one optimiser step, nothing reads the old policy
        (with_algorithm(base, "miner"), "sampler"),  # intrinsic reward from the old log-probs alone
        (with_algorithm(recompute, "miner"), "forward"),  # verl's recompute
        (with_algorithm(base, "bapo"), "sampler"),  # 2 epochs x 4 mini-batches: the ratio's old policy
        (with_algorithm(base, "entropy_adv"), "forward"),  # advantage from the old entropies
        (with_algorithm(base, "ucas"), "forward"),  # advantage from the old logits
        *((with_algorithm(dataclasses.replace(base, optim=optim), "grpo"), "sampler") for optim in several),
        *((with_algorithm(dataclasses.replace(recompute, optim=optim), "grpo"), "forward") for optim in several),
    ]:
        assert config.old_policy_source == want, (config.preset, config.optim, want)


def test_old_logp_from_the_sampler_is_refused_where_it_is_not_the_old_policys():
    miner = with_algorithm(tiny(), "miner")
    with pytest.raises(ValueError, match=r"old_logp_from_sampler=true with model\.compute_dtype='bfloat16'"):
        dataclasses.replace(miner, model=dataclasses.replace(miner.model, compute_dtype="bfloat16"))
    with pytest.raises(ValueError, match=r"old_logp_from_sampler=true with rollout\.engine='vllm'"):
        dataclasses.replace(miner, rollout=RolloutConfig(engine="vllm", top_p=0.95))
    # where the flag has no effect (the trained policy's own log-probs), or is off, nothing is refused
    grpo = with_algorithm(tiny(), "grpo")
    dataclasses.replace(grpo, model=dataclasses.replace(grpo.model, compute_dtype="bfloat16"))
    dataclasses.replace(miner, rollout=RolloutConfig(engine="vllm", top_p=0.95, old_logp_from_sampler=False))


def test_split_by_advantage_by_hand():
    adv_BT = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.0], [0.0, -1.0], [0.0, 0.0], [0.0, 2.0]])
    mask_BT = torch.tensor([[True, True], [True, True], [True, True], [True, True], [True, True], [True, False]])
    rows = [0, 1, 2, 3, 4, 5]  # live: 1 and 3 (row 5's non-zero advantage is beyond its mask)
    assert split_by_advantage(rows, adv_BT, mask_BT, 1) == ([1, 3], [0, 2, 4, 5])
    assert split_by_advantage([5, 4, 3, 2, 1, 0], adv_BT, mask_BT, 2) == ([3, 1], [5, 4, 2, 0])
    assert split_by_advantage(rows[:3], adv_BT, mask_BT, 2) == ([1, 0], [2])  # 1 live row, one moved over
    assert split_by_advantage([0, 2, 4, 5], adv_BT, mask_BT, 2) == ([0, 2], [4, 5])  # none live: one per rank


@pytest.mark.parametrize(("preset", "uniform_groups"), [("dr_grpo", 2), ("gspo", 2), ("dapo", 2), ("dr_grpo", 4)])
def test_zero_advantage_rows_skip_the_backward_exactly(model_dir: Path, preset: str, uniform_groups: int):
    """Rows with zero advantage get a forward only: the same weights and metrics as with their backward, with some
    groups uniform and with all of them uniform. SGD with momentum after a first all-mixed step: linear in the
    gradients, and a zero gradient moves the weights by the momentum where a missing one would not."""
    torch.set_num_threads(1)
    mixed = batch = _random_batch(model_dir, P=4, G=2)
    correct_B = torch.tensor([True, False, True, False, True, True, False, False])[: 8 if uniform_groups == 2 else 0]
    if uniform_groups == 4:
        correct_B = torch.tensor([True, True, False, False, True, True, False, False])
    batch = dataclasses.replace(batch, correct_B=correct_B, rewards_B=correct_B.float())
    info = init_distributed()
    results = []
    for skip in (True, False):
        config = dataclasses.replace(
            with_algorithm(tiny(), preset, kl_coef=0.0),
            rollout=RolloutConfig(prompts_per_step=4, group_size=2, max_new_tokens=10),
            optim=OptimConfig(lr=1e-2, micro_batch_size=3, skip_zero_advantage_backward=skip),
        )
        assert zero_advantage_rows_skip_backward(config) is skip
        model = _load(model_dir)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        adv_BT = compute_advantages(config.algorithm, mixed.rewards_B, None, mixed.mask_BT, 2)
        update_policy(model, optimizer, scheduler, mixed, None, None, adv_BT, config, info, 1, 0)
        adv_BT = compute_advantages(config.algorithm, batch.rewards_B, None, batch.mask_BT, 2)
        assert (adv_BT == 0).all(-1).sum() == 2 * uniform_groups
        metrics = update_policy(model, optimizer, scheduler, batch, None, None, adv_BT, config, info, 2, 0)
        results.append((metrics, model.state_dict()))
    (skip_metrics, skip_weights), (full_metrics, full_weights) = results
    assert skip_metrics.keys() == full_metrics.keys()
    for key, value in full_metrics.items():
        assert skip_metrics[key] == pytest.approx(value, abs=1e-6), key
    for name, value in full_weights.items():
        torch.testing.assert_close(skip_weights[name], value, atol=1e-6, rtol=0)


def test_zero_advantage_backward_is_kept_where_those_rows_have_a_gradient():
    assert zero_advantage_rows_skip_backward(with_algorithm(tiny(), "dr_grpo"))
    assert not zero_advantage_rows_skip_backward(with_algorithm(tiny(), "grpo"))  # KL to the reference: beta 0.04
    assert not zero_advantage_rows_skip_backward(with_algorithm(tiny(), "entropy_bonus", kl_coef=0.0))
    assert not zero_advantage_rows_skip_backward(with_algorithm(tiny(), "clip_cov"))  # micro-batch statistics


def test_concat_pads_to_the_widest_batch(model_dir: Path):
    batch = _random_batch(model_dir, P=2, G=2)
    narrow = batch.select([0])
    both = concat([narrow, batch], pad_id=0)
    assert both.size == 5 and both.tokens_BT.shape[1] == batch.tokens_BT.shape[1]
    assert torch.equal(both.mask_BT.sum(-1), torch.cat([narrow.lengths_B, batch.lengths_B]))
