"""rollout/: sampling by hand, the shared Rollout assembly, the transformers engine against a teacher-forced forward,
the lean decode step against the HF forward."""

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen3ForCausalLM,
)

from rollout import Rollout, SamplingParams, TransformersEngine, load_engine
from rollout.common import encode_prompts, finish_rollout, pad_right, request_seeds
from rollout.lean_decode import LeanDecoder, lean_weights
from rollout.transformers_engine import HFDecoder, draw_categorical, sample_tokens, top_p_filter
from training.tiny import char_tokenizer, random_tiny_model, tiny_config

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


def test_draw_categorical_frequencies():
    """Unnormalised weights (1, 0, 6, 3, 0): 40,000 draws land 4,000 / 0 / 24,000 / 12,000 / 0 times, within 5 sigma
    (sigma = sqrt(n p (1 - p)) = 60, 98, 92); zero weights, first and last included, are never drawn."""
    weights_AV = torch.tensor([[1.0, 0.0, 6.0, 3.0, 0.0]]).repeat(40_000, 1)
    token_A = draw_categorical(weights_AV, torch.Generator().manual_seed(0))
    counts = torch.bincount(token_A, minlength=5).tolist()
    assert counts[1] == counts[4] == 0
    for got, want, sigma in zip([counts[0], counts[2], counts[3]], [4_000, 24_000, 12_000], [60, 98, 92], strict=True):
        assert abs(got - want) < 5 * sigma, counts
    assert draw_categorical(torch.tensor([[0.0, 2.0]]), torch.Generator().manual_seed(1)).tolist() == [1]


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


# --- the lean decode step ----------------------------------------------------------------------------------------


def random_small(config_class: type, seed: int = 0, **fields: object) -> torch.nn.Module:
    """A random 2-layer model of ``config_class`` (Qwen2: q/k/v biases; Mistral: a window longer than any test)."""
    settings = {
        "vocab_size": len(char_tokenizer()),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "initializer_range": 0.1,
    }
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config_class(**(settings | fields))).eval()


def random_llama(seed: int = 0) -> LlamaForCausalLM:
    """A random tiny Llama unlike the Qwen3: biases, one kv head for 4 query heads (MQA), untied head, linear rope
    scaling; initialised 10x wider than HF's default so attention is far from uniform."""
    return random_small(
        LlamaConfig,
        seed,
        intermediate_size=160,
        num_key_value_heads=1,
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        initializer_range=0.2,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )


@pytest.mark.parametrize("architecture", ["qwen3", "llama", "qwen2", "mistral"])
def test_lean_logits_equal_the_hf_forward_at_every_position(architecture: str, tmp_path: Path):
    """Prefill and every decode step, left-padded prompts of lengths 6, 2, 4 and rows dropped mid-way, against one
    teacher-forced HF forward over [prompt | tokens] (no cache involved)."""
    match architecture:
        case "qwen3":
            model = AutoModelForCausalLM.from_pretrained(random_tiny_model(tmp_path / "tiny", seed=3)).eval()
        case "llama":
            model = random_llama()
        case "qwen2":
            model = random_small(Qwen2Config)
        case "mistral":
            model = random_small(MistralConfig, sliding_window=64)
    P, G, L, T = 3, 2, 6, 9
    B, V = P * G, model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    attention_PL = (torch.arange(L) >= torch.tensor([[0], [4], [2]])).long()  # prompt lengths 6, 2, 4
    ids_PL = torch.randint(2, V, (P, L), generator=generator).masked_fill(attention_PL == 0, 0)
    tokens_BT = torch.randint(2, V, (B, T), generator=generator)
    ids_BS = torch.cat([ids_PL.repeat_interleave(G, dim=0), tokens_BT], dim=1)
    attention_BS = torch.cat([attention_PL.repeat_interleave(G, dim=0), torch.ones((B, T), dtype=torch.long)], 1)
    with torch.inference_mode():
        position_BS = (attention_BS.cumsum(-1) - 1).clamp(min=0)
        want_BSV = model(input_ids=ids_BS, attention_mask=attention_BS, position_ids=position_BS).logits
        weights = lean_weights(model, L + T)
        assert weights is not None
        decoder = LeanDecoder(weights, ids_PL, attention_PL, G, T)
        torch.testing.assert_close(decoder.prefill(), want_BSV[:, L - 1], atol=1e-5, rtol=0)
        rows_A = torch.arange(B)
        for t in range(T):
            if t == 3:  # rows 1 and 4 finish: the batch is compacted
                keep_A = torch.tensor([0, 2, 3, 5])
                decoder.keep(keep_A)
                rows_A = rows_A[keep_A]
            got_AV = decoder.step(tokens_BT[rows_A, t])
            torch.testing.assert_close(got_AV, want_BSV[rows_A, L + t], atol=1e-5, rtol=0)
    assert want_BSV[:, L:].std(dim=1).mean() > 0.05, "logits should differ between positions, far beyond atol"


def test_lean_step_follows_an_enclosing_autocast():
    """Under bfloat16 autocast the lean step rounds like HF's forward does: both stay within bfloat16 rounding of the
    float32 logits (|logit| <= 7 here; 2**-8 relative is 0.03), and agree with each other to that scale."""
    model = eos_prone_model()
    P, L, G, T = 3, 7, 2, 8
    attention_PL = (torch.arange(L) >= torch.tensor([[3], [0], [1]])).long()
    ids_PL = torch.randint(2, model.config.vocab_size, (P, L), generator=torch.Generator().manual_seed(0))
    tokens_TB = torch.randint(2, model.config.vocab_size, (T, P * G), generator=torch.Generator().manual_seed(1))

    def logits(step: str, autocast: bool) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if step == "hf":
                decoder = HFDecoder(model, "cache", ids_PL, attention_PL, G, T)
            else:
                decoder = LeanDecoder(lean_weights(model, L + T), ids_PL, attention_PL, G, T)
            return torch.stack([decoder.prefill()] + [decoder.step(tokens_TB[t]) for t in range(T - 1)]).float()

    exact, hf, lean = logits("hf", False), logits("hf", True), logits("lean", True)
    assert lean.dtype == torch.float32 and not torch.equal(lean, logits("lean", False))  # autocast took effect
    assert (hf - exact).abs().max() < 0.1 and (lean - exact).abs().max() < 0.1 and (lean - hf).abs().max() < 0.1
    with torch.autocast("cpu", dtype=torch.bfloat16):  # matmul weights cast once per call, norms kept
        weights = lean_weights(model, L + T)
    assert weights.head_weight.dtype == weights.layers[0].qkv_weight.dtype == torch.bfloat16
    assert weights.layers[0].input_norm.dtype == weights.embed.dtype == torch.float32


@pytest.mark.parametrize("step", ["lean", "hf"])
def test_logp_equals_teacher_forced_forward_for_both_steps(step: str):
    model = random_llama(seed=1)
    engine = TransformersEngine(model, char_tokenizer(), step=step)
    ro = engine.generate(PROMPTS, SamplingParams(n=2, temperature=0.8, max_new_tokens=12, seed=4))
    want_BT = teacher_forced_logp(model, ro.prompt_ids, ro.tokens_BT, ro.lengths_B, 2, 0.8)
    # |logp| reaches 6.5 on this sharp model: HF's own cached step is 9e-6 from its uncached forward (rounding)
    torch.testing.assert_close(ro.logp_BT[ro.mask_BT], want_BT[ro.mask_BT], atol=2e-5, rtol=0)


def test_lean_and_hf_steps_sample_the_same_tokens(engine: TransformersEngine):
    """Both steps feed one sampling loop and one generator, so equal logits mean equal draws.

    The logits agree to ~1e-7, not bit for bit; a draw could differ only if it fell within ~1e-7 of a boundary
    between two tokens, which these fixed seeds do not (the test is deterministic, not flaky).
    """
    hf = TransformersEngine(engine.model, engine.tokenizer, step="hf")
    params = SamplingParams(n=4, temperature=1.0, top_p=0.95, max_new_tokens=20, seed=5)
    lean_ro, hf_ro = engine.generate(PROMPTS, params), hf.generate(PROMPTS, params)
    assert engine.lean_weights(lean_ro.prompt_ids, params) is not None
    assert torch.equal(lean_ro.tokens_BT, hf_ro.tokens_BT) and torch.equal(lean_ro.lengths_B, hf_ro.lengths_B)
    torch.testing.assert_close(lean_ro.logp_BT, hf_ro.logp_BT, atol=1e-5, rtol=0)


def test_lean_step_reads_the_live_weights():
    """An in-place update between generate() calls (what the optimiser does) changes the lean step's samples."""
    model = eos_prone_model(seed=4)
    engine = TransformersEngine(model, char_tokenizer())
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
    before = engine.generate(PROMPTS, params)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(-3.0)
        model.model.layers[1].self_attn.k_proj.weight.mul_(5.0)
    after, hf_after = (
        engine.generate(PROMPTS, params),
        TransformersEngine(model, char_tokenizer(), step="hf").generate(PROMPTS, params),
    )
    assert not torch.equal(before.logp_BT, after.logp_BT)
    assert torch.equal(after.tokens_BT, hf_after.tokens_BT)
    torch.testing.assert_close(after.logp_BT, hf_after.logp_BT, atol=1e-5, rtol=0)


def test_unrecognised_architecture_uses_the_hf_step():
    tokenizer = char_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64, eos_token_id=1)
    model = GPT2LMHeadModel(config).eval()
    engine = TransformersEngine(model, tokenizer)
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=10, seed=0)
    assert lean_weights(model, 64) is None and engine.lean_weights([[2, 3]], params) is None
    ro = engine.generate(PROMPTS, params)
    want_BT = teacher_forced_logp(model, ro.prompt_ids, ro.tokens_BT, ro.lengths_B, 2, 1.0)
    torch.testing.assert_close(ro.logp_BT[ro.mask_BT], want_BT[ro.mask_BT], atol=1e-5, rtol=0)


def test_lean_weights_declines_what_it_cannot_reproduce():
    vocab = len(char_tokenizer())
    small = {"vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    small |= {"num_attention_heads": 2, "num_key_value_heads": 1}
    mistral = MistralForCausalLM(MistralConfig(**small, sliding_window=16))
    assert lean_weights(mistral, 16) is not None  # a window as long as the sequence is full attention
    assert lean_weights(mistral, 17) is None
    dynamic = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    assert lean_weights(LlamaForCausalLM(LlamaConfig(**small, rope_parameters=dynamic)), 8) is None

    class Adapted(torch.nn.Linear):  # stands for a LoRA or quantised layer: more than F.linear(x, weight, bias)
        pass

    llama = LlamaForCausalLM(LlamaConfig(**small))
    assert lean_weights(llama, 8) is not None
    llama.model.layers[0].mlp.up_proj = Adapted(32, 64, bias=False)
    assert lean_weights(llama, 8) is None
    with pytest.raises(ValueError, match="step"):
        TransformersEngine(mistral, char_tokenizer(), step="fast")


@pytest.mark.parametrize("step", ["lean", "hf"])
def test_compute_dtype_bfloat16_samples_under_autocast(step: str):
    """compute_dtype=bfloat16: the behaviour log-probs are the bfloat16 model's, close to (and not equal to) the
    float32 teacher-forced ones; the weights stay float32."""
    model = eos_prone_model()
    engine = TransformersEngine(model, char_tokenizer(), step=step, compute_dtype=torch.bfloat16)
    ro = engine.generate(PROMPTS, SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=4))
    want_BT = teacher_forced_logp(model, ro.prompt_ids, ro.tokens_BT, ro.lengths_B, 2, 1.0)
    gap = (ro.logp_BT - want_BT)[ro.mask_BT].abs().max().item()
    assert 1e-5 < gap < 0.1, gap
    assert all(p.dtype == torch.float32 for p in model.parameters())
