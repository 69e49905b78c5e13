"""rollout/: sampling by hand, the shared Rollout assembly, the transformers engine against a teacher-forced forward."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen3ForCausalLM

from rollout import Rollout, SamplingParams, TransformersEngine, load_engine
from rollout.common import encode_prompts, finish_rollout, pad_right, request_seeds
from rollout.transformers_engine import sample_tokens, top_p_filter
from training.tiny import char_tokenizer, tiny_config

PROMPTS = ["12+34=", "7*8=", "100-1=", "The answer is "]  # different lengths: left padding matters


def eos_prone_model(out_dir: Path | None = None, seed: int = 0, eos_logit: float = 4.0) -> Qwen3ForCausalLM:
    """A random tiny Qwen3 whose EOS logit is about 4 on an average hidden state, so rows end at varied lengths.

    With tied embeddings the EOS logit is h . e_eos; e_eos = 4 u / |u|^2 along the mean final hidden state u.
    """
    tokenizer = char_tokenizer()
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny_config(len(tokenizer))).eval()
    with torch.no_grad():
        ids = torch.randint(2, len(tokenizer), (16, 32))
        direction = model.model(input_ids=ids).last_hidden_state.reshape(-1, model.config.hidden_size).mean(0)
        model.model.embed_tokens.weight[tokenizer.eos_token_id] = eos_logit * direction / direction.norm() ** 2
    if out_dir is not None:
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    return model


def teacher_forced_logp(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    tokens_BT: torch.Tensor,
    lengths_B: torch.Tensor,
    n: int,
    temperature: float,
) -> torch.Tensor:
    """log softmax(logits / temperature) of each response token, from one forward of [left-padded prompt | response]."""
    B, T = tokens_BT.shape
    prompt_lengths = [len(prompt_ids[b // n]) for b in range(B)]
    L = max(prompt_lengths)
    ids_BS = torch.zeros((B, L + T), dtype=torch.long)
    attention_BS = torch.zeros((B, L + T), dtype=torch.long)
    for b in range(B):
        ids_BS[b, L - prompt_lengths[b] : L] = torch.tensor(prompt_ids[b // n])
        ids_BS[b, L:] = tokens_BT[b]
        attention_BS[b, L - prompt_lengths[b] : L + int(lengths_B[b])] = 1
    position_BS = (attention_BS.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits_BTV = model(input_ids=ids_BS, attention_mask=attention_BS, position_ids=position_BS).logits
    logp_BTV = torch.log_softmax(logits_BTV[:, L - 1 : -1].float() / temperature, dim=-1)
    return logp_BTV.gather(2, tokens_BT[..., None]).squeeze(2)


@pytest.fixture(scope="module")
def engine() -> TransformersEngine:
    return TransformersEngine(eos_prone_model(), char_tokenizer())


@pytest.mark.parametrize(
    "field, value",
    [("n", 0), ("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("max_new_tokens", 0), ("seed", -1)],
)
def test_sampling_params_rejects_bad_values(field: str, value: float):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


@pytest.mark.parametrize(
    "top_p, want",
    [
        (0.7, [0.3, 0.0, 0.5, 0.0]),  # sorted 0.5, 0.3, 0.15, 0.05: mass above = 0, 0.5, 0.8, 0.95; keep if < 0.7
        (0.85, [0.3, 0.15, 0.5, 0.0]),  # 0.8 < 0.85 keeps 0.15 as well
        (0.4, [0.0, 0.0, 0.5, 0.0]),  # the top token is always kept
    ],
)
def test_top_p_filter_by_hand(top_p: float, want: list[float]):
    probs_AV = torch.tensor([[0.3, 0.15, 0.5, 0.05]])
    torch.testing.assert_close(top_p_filter(probs_AV, top_p), torch.tensor([want]), atol=1e-7, rtol=0)


def test_sample_tokens_logp_is_tempered_and_not_renormalised():
    # logits (ln 3, 0) at temperature 1: probs (0.75, 0.25); top_p 0.5 keeps only token 0, whose logp stays ln 0.75
    logits_AV = torch.tensor([[3.0, 1.0]]).log().repeat(50, 1)
    token_A, logp_A = sample_tokens(logits_AV, 1.0, 0.5, torch.Generator().manual_seed(0))
    assert token_A.tolist() == [0] * 50
    torch.testing.assert_close(logp_A, torch.full((50,), 0.75).log(), atol=1e-6, rtol=0)
    # temperature 0.5 squares the odds: probs (9/10, 1/10); temperature 0 is greedy with logp under softmax(logits)
    _, logp_A = sample_tokens(logits_AV[:1], 0.5, 1.0, torch.Generator().manual_seed(0))
    assert logp_A.item() in (
        pytest.approx(torch.tensor(0.9).log().item()),
        pytest.approx(torch.tensor(0.1).log().item()),
    )
    token_A, logp_A = sample_tokens(logits_AV[:1], 0.0, 1.0, torch.Generator().manual_seed(0))
    assert token_A.item() == 0 and logp_A.item() == pytest.approx(torch.tensor(0.75).log().item(), abs=1e-6)


def test_finish_rollout_by_hand():
    tokenizer = char_tokenizer()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    a, b = tokenizer.convert_tokens_to_ids(["a", "b"])
    tokens_BT = torch.tensor([[a, eos, b, b], [b, b, a, b]])  # row 0 ended at its 2nd token; row 1 ran out
    logp_BT = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-0.5, -0.5, -0.5, -0.5]])
    ro = finish_rollout([[a]], tokens_BT, logp_BT, torch.tensor([2, 3]), torch.tensor([True, False]), tokenizer, pad)
    assert ro.tokens_BT.tolist() == [[a, eos, pad], [b, b, a]]  # cut to the longest row (3), padded past lengths
    assert ro.mask_BT.tolist() == [[True, True, False], [True, True, True]]
    assert ro.logp_BT.tolist() == [[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]]
    assert ro.truncated_B.tolist() == [False, True] and ro.texts == ["a", "bba"] and ro.n == 2 and ro.num_tokens == 5


def test_pad_right_and_request_seeds():
    assert pad_right([[1, 2, 3], [4]], 0, torch.long).tolist() == [[1, 2, 3], [4, 0, 0]]
    seeds = request_seeds(7, 100)
    assert seeds == request_seeds(7, 100) and len(set(seeds)) == 100 and all(0 <= s < 2**63 for s in seeds)
    # vLLM seeds sample j with seed + j: neighbouring run seeds must not produce overlapping streams
    assert not {s + j for s in seeds for j in range(16)} & {s + j for s in request_seeds(8, 100) for j in range(16)}


def test_encode_prompts_rejects_bad_input():
    tokenizer = char_tokenizer()
    with pytest.raises(ValueError, match="non-empty list"):
        encode_prompts(tokenizer, "12+34=")
    with pytest.raises(ValueError, match="prompt 1"):
        encode_prompts(tokenizer, ["1+1=", ""])


def test_logp_equals_teacher_forced_forward(engine: TransformersEngine):
    params = SamplingParams(n=3, temperature=0.7, top_p=0.9, max_new_tokens=24, seed=1)
    ro = engine.generate(PROMPTS, params)
    assert 0 < int(ro.truncated_B.sum()) < 12, "the test model should end some rows early and truncate others"
    want_BT = teacher_forced_logp(engine.model, ro.prompt_ids, ro.tokens_BT, ro.lengths_B, 3, 0.7)
    torch.testing.assert_close(ro.logp_BT[ro.mask_BT], want_BT[ro.mask_BT], atol=1e-5, rtol=0)


def test_rollout_layout(engine: TransformersEngine):
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=16, seed=3)
    ro = engine.generate(PROMPTS, params)
    B, T = ro.tokens_BT.shape
    eos, pad = engine.tokenizer.eos_token_id, engine.tokenizer.pad_token_id
    assert B == 16 and int(ro.lengths_B.max()) == T and ro.prompt_ids == encode_prompts(engine.tokenizer, PROMPTS)
    assert torch.equal(ro.mask_BT, torch.arange(T) < ro.lengths_B[:, None])
    assert (ro.logp_BT[~ro.mask_BT] == 0).all() and (ro.tokens_BT[~ro.mask_BT] == pad).all()
    assert (ro.logp_BT[ro.mask_BT] < 0).all()
    for b in range(B):
        row = ro.tokens_BT[b, : ro.lengths_B[b]].tolist()
        assert eos not in row[:-1]  # nothing is generated after EOS
        assert (row[-1] == eos) != bool(ro.truncated_B[b])  # ended with EOS, or truncated
        assert not ro.truncated_B[b] or len(row) == params.max_new_tokens
        assert ro.texts[b] == engine.tokenizer.decode(row, skip_special_tokens=True)
    assert not ro.tokens_BT.is_inference() and not ro.logp_BT.is_inference()  # usable by the trainer's autograd


def test_seed_fixes_the_sample(engine: TransformersEngine):
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=11)
    first, again = engine.generate(PROMPTS, params), engine.generate(PROMPTS, params)
    other = engine.generate(PROMPTS, SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=12))
    assert torch.equal(first.tokens_BT, again.tokens_BT) and torch.equal(first.logp_BT, again.logp_BT)
    assert not torch.equal(first.tokens_BT, other.tokens_BT)


def test_greedy_groups_padding_and_chunks_change_nothing():
    """Greedy rows p*n .. p*n+n-1 all equal prompt p decoded alone; padding, chunking, compaction change no token."""
    engine = TransformersEngine(eos_prone_model(seed=2, eos_logit=2.0), char_tokenizer())
    params = SamplingParams(n=3, temperature=0.0, max_new_tokens=16)
    batched = engine.generate(PROMPTS, params)
    assert sorted(set(batched.lengths_B.tolist())) == [1, 3, 16]  # rows end at different steps: compaction happens
    chunked = TransformersEngine(engine.model, engine.tokenizer, max_batch_rows=3).generate(PROMPTS, params)
    never_compacted = TransformersEngine(engine.model, engine.tokenizer, compact_every=0).generate(PROMPTS, params)
    always_compacted = TransformersEngine(engine.model, engine.tokenizer, compact_every=1).generate(PROMPTS, params)
    for p, prompt in enumerate(PROMPTS):
        alone = engine.generate([prompt], SamplingParams(n=1, temperature=0.0, max_new_tokens=16))
        for b in range(3 * p, 3 * p + 3):
            for ro in (batched, chunked, never_compacted, always_compacted):
                length = int(ro.lengths_B[b])
                assert length == int(alone.lengths_B[0])
                assert ro.tokens_BT[b, :length].tolist() == alone.tokens_BT[0, :length].tolist()
                torch.testing.assert_close(ro.logp_BT[b, :length], alone.logp_BT[0, :length], atol=1e-5, rtol=0)


def test_engine_restores_training_mode_and_shares_the_module(engine: TransformersEngine):
    engine.model.train()
    engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=2))
    assert engine.model.training
    engine.model.eval()
    engine.sync_weights(engine.model)
    with pytest.raises(ValueError, match="different module"):
        engine.sync_weights(eos_prone_model(seed=1))


def test_load_engine_from_a_folder(tmp_path: Path):
    eos_prone_model(tmp_path / "model")
    engine = load_engine("transformers", tmp_path / "model", device="cpu")
    ro = engine.generate(PROMPTS, SamplingParams(n=2, temperature=0.7, max_new_tokens=8, seed=0))
    assert isinstance(ro, Rollout) and ro.tokens_BT.shape[0] == 8
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    want_BT = teacher_forced_logp(reloaded, ro.prompt_ids, ro.tokens_BT, ro.lengths_B, 2, 0.7)
    torch.testing.assert_close(ro.logp_BT[ro.mask_BT], want_BT[ro.mask_BT], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="not found"):
        load_engine("transformers", tmp_path / "missing")
