"""The mechanisms that exist for memory change no result and buy what they are for: gradient checkpointing
(train mode during the update), token-budget micro-batches, log-probs from hidden states in token chunks."""

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from training.batch import StepBatch, sequence_logp
from training.config import ModelConfig, OptimConfig, RolloutConfig, tiny, with_algorithm
from training.distributed import enable_activation_checkpointing, init_distributed
from training.tiny import random_tiny_model
from training.update import (
    padded_tokens,
    plan_micro_batches,
    split_to_count,
    token_budget_micro_batches,
    training_mode,
    update_policy,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_tiny_model(tmp_path_factory.mktemp("model"), seed=2)


def _batch(prompt_lengths: list[int], response_lengths: list[int], vocab: int = 20, seed: int = 0) -> StepBatch:
    """A step batch of random tokens with the given prompt and response lengths (alternating correctness)."""
    generator = torch.Generator().manual_seed(seed)
    B, T = len(response_lengths), max(response_lengths)
    lengths_B = torch.tensor(response_lengths)
    correct_B = torch.arange(B) % 2 == 0
    return StepBatch(
        problem_B=[b // 2 for b in range(B)],
        prompt_ids_B=[torch.randint(3, vocab, (n,), generator=generator).tolist() for n in prompt_lengths],
        tokens_BT=torch.randint(3, vocab, (B, T), generator=generator),
        sampler_logp_BT=torch.zeros(B, T),
        mask_BT=torch.arange(T)[None, :] < lengths_B[:, None],
        lengths_B=lengths_B,
        truncated_B=torch.zeros(B, dtype=torch.bool),
        correct_B=correct_B,
        rewards_B=correct_B.float(),
        texts=[""] * B,
    )


def test_token_budget_packing_by_hand():
    # rows (prompt, response): 0 (2, 8), 1 (3, 5), 2 (2, 4), 3 (1, 2), 4 (2, 1)
    batch = _batch([2, 3, 2, 1, 2], [8, 5, 4, 2, 1])
    assert padded_tokens([0, 1], batch) == 2 * (3 + 8)  # longest prompt 3 + longest response 8, two rows
    # budget 16: [0] alone (10; with 1 it is 22); [1, 2] = 2 x (3+5) = 16; [3, 4] = 2 x (2+2) = 8, + nothing left
    assert token_budget_micro_batches([0, 1, 2, 3, 4], batch, 16) == [[0], [1, 2], [3, 4]]
    # budget 5: row 0 (10 positions) is over budget alone and still runs, alone
    assert token_budget_micro_batches([0, 3, 4], batch, 5) == [[0], [3], [4]]
    # to 4 micro-batches: [1, 2] (16 positions) is the largest that can be halved
    assert split_to_count([[0], [1, 2], [3, 4]], 4, batch) == [[0], [1], [2], [3, 4]]
    assert split_to_count([[0, 1, 2, 3, 4]], 3, batch) == [[0, 1], [2], [3, 4]]


def test_budget_and_fixed_rows_give_the_same_micro_batch_count_rule():
    batch = _batch([2, 3, 2, 1, 2], [8, 5, 4, 2, 1])
    info = init_distributed()
    fixed = plan_micro_batches([0, 1, 2, 3, 4], batch, tiny(), info)
    assert fixed == [[0, 1, 2, 3, 4]]  # 32 rows per micro-batch by default
    budget = dataclasses.replace(tiny(), optim=OptimConfig(max_tokens_per_micro_batch=16))
    assert plan_micro_batches([0, 1, 2, 3, 4], batch, budget, info) == [[0], [1, 2], [3, 4]]


@pytest.mark.parametrize("preset", ["grpo", "dapo"])
def test_update_with_token_budget_and_chunked_logp_equals_fixed_rows(model_dir: Path, preset: str):
    """One optimiser step over 8 rows: the token budget (micro-batches of 1-5 rows) and chunked log-probs give the
    weights of fixed 8-row micro-batches with full logits (the Normalizers are counted per step)."""
    torch.set_num_threads(1)
    batch = _batch([3, 5, 2, 4, 3, 3, 6, 2], [9, 2, 7, 1, 5, 9, 3, 4], seed=1)
    info = init_distributed()
    results = []
    for optim, chunk in ((OptimConfig(micro_batch_size=8), None), (OptimConfig(max_tokens_per_micro_batch=30), 5)):
        config = dataclasses.replace(
            with_algorithm(tiny(), preset, entropy_coef=0.01),
            model=ModelConfig(logp_chunk_tokens=chunk),
            rollout=RolloutConfig(prompts_per_step=2, group_size=4, max_new_tokens=10, temperature=0.8),
            optim=dataclasses.replace(optim, lr=1e-2),
        )
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        with torch.no_grad():
            old_logp_BT, _ = sequence_logp(
                model, batch.prompt_ids_B, batch.tokens_BT, batch.mask_BT, 0.8, 0, torch.float32
            )
        old_logp_BT = old_logp_BT - 0.05 * batch.mask_BT  # ratios away from 1, so clipping takes part
        ref_BT = old_logp_BT + 0.1 * batch.mask_BT  # grpo's KL term takes part
        adv_BT = (batch.rewards_B[:, None] - 0.5).expand_as(old_logp_BT) * batch.mask_BT
        metrics = update_policy(model, optimizer, scheduler, batch, old_logp_BT, ref_BT, adv_BT, config, info, 1, 0)
        assert not model.training  # back in eval mode for rollout and evaluation
        results.append((model.state_dict(), metrics))
    assert len(token_budget_micro_batches(list(range(8)), batch, 30)) > 2  # the budget really split the rows
    (want, want_metrics), (got, got_metrics) = results
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=1e-6, rtol=0, msg=name)
    for key in ("policy/loss", "policy/entropy", "optim/grad_norm"):
        assert got_metrics[key] == pytest.approx(want_metrics[key], abs=1e-5), key


def _saved_bytes_and_grads(model: torch.nn.Module, batch: StepBatch) -> tuple[int, dict[str, torch.Tensor]]:
    """Bytes of the distinct storages autograd saves for the backward of one forward, and the gradients."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logp_BT, entropy_BT = sequence_logp(
            model, batch.prompt_ids_B, batch.tokens_BT, batch.mask_BT, 1.0, 0, torch.float32
        )
    (logp_BT.sum() + 0.1 * entropy_BT.sum()).backward()
    return sum(storages.values()), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_gradient_checkpointing_saves_activations_in_train_mode_only_and_keeps_gradients(model_dir: Path):
    torch.set_num_threads(1)
    batch = _batch([6] * 4, [40, 33, 25, 12], seed=3)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    plain_bytes, plain_grads = _saved_bytes_and_grads(model, batch)
    enable_activation_checkpointing(model)
    eval_bytes, _ = _saved_bytes_and_grads(model, batch)  # from_pretrained's eval mode: no checkpointing at all
    with training_mode(model):
        checkpointed_bytes, checkpointed_grads = _saved_bytes_and_grads(model, batch)
    assert not model.training
    assert eval_bytes == plain_bytes
    # 4 layers: each keeps only its input (4 x 46 positions x 128 floats) instead of ~20 tensors; the head stays
    assert checkpointed_bytes < 0.5 * plain_bytes, (checkpointed_bytes, plain_bytes)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_sequence_logp_equals_full_logits(model_dir: Path, chunk: int):
    """Values and every parameter's gradient (the tied embedding / lm_head included) within 1e-5."""
    torch.set_num_threads(1)
    batch = _batch([3, 5, 2], [9, 4, 6], seed=4)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out = []
    for chunk_tokens in (None, chunk):
        model.zero_grad(set_to_none=True)
        logp_BT, entropy_BT = sequence_logp(
            model, batch.prompt_ids_B, batch.tokens_BT, batch.mask_BT, 0.6, 0, torch.float32, chunk_tokens=chunk_tokens
        )
        (logp_BT.sum() - 0.3 * entropy_BT.sum()).backward()
        out.append((logp_BT.detach(), entropy_BT.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (want_logp, want_entropy, want_grads), (logp, entropy, grads) = out
    torch.testing.assert_close(logp, want_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, want_entropy, atol=1e-5, rtol=0)
    assert (logp[~batch.mask_BT] == 0).all() and (entropy[~batch.mask_BT] == 0).all()
    for name, grad in want_grads.items():  # float32 rounding of gradients up to ~25 (the summed embedding rows)
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-6, msg=name)
    # UCAS's logit stats (no-grad use) come from the same chunks
    with torch.no_grad():
        args = (model, batch.prompt_ids_B, batch.tokens_BT, batch.mask_BT, 0.6, 0, torch.float32, True)
        (*_, want_stats), (*_, stats) = sequence_logp(*args), sequence_logp(*args, chunk_tokens=chunk)
    torch.testing.assert_close(stats.logit_BT, want_stats.logit_BT, atol=1e-5, rtol=0)
    torch.testing.assert_close(stats.certainty_BT, want_stats.certainty_BT, atol=1e-5, rtol=0)
