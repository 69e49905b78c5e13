"""token_logp_and_entropy against a float64 log_softmax reference: values, gradients, chunk boundaries, views."""

import math

import pytest
import torch

from algorithms import linear_token_logp_and_entropy, token_logit_stats, token_logp_and_entropy


def reference(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor, temperature: float):
    logp_BTV = torch.log_softmax(logits_BTV.double() / temperature, dim=-1)
    logp_BT = logp_BTV.gather(-1, tokens_BT[..., None]).squeeze(-1)
    entropy_BT = -(logp_BTV.exp() * logp_BTV).sum(dim=-1)
    return logp_BT, entropy_BT


def test_uniform_logits_by_hand():
    # V equal logits: logp = -ln V for every token, entropy = ln V, at any temperature
    logp_BT, entropy_BT = token_logp_and_entropy(torch.zeros(1, 2, 4), torch.tensor([[0, 3]]), temperature=0.7)
    torch.testing.assert_close(logp_BT, torch.full((1, 2), -math.log(4)), atol=1e-6, rtol=0)
    torch.testing.assert_close(entropy_BT, torch.full((1, 2), math.log(4)), atol=1e-6, rtol=0)


def test_two_token_distribution_by_hand():
    # logits (ln 3, 0) at temperature 1: p = (3/4, 1/4); H = -(3/4 ln 3/4 + 1/4 ln 1/4)
    logits_BTV = torch.tensor([[[math.log(3.0), 0.0]]])
    logp_BT, entropy_BT = token_logp_and_entropy(logits_BTV, torch.tensor([[1]]))
    torch.testing.assert_close(logp_BT, torch.tensor([[math.log(0.25)]]), atol=1e-6, rtol=0)
    want_entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    torch.testing.assert_close(entropy_BT, torch.tensor([[want_entropy]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "shape, temperature",
    # (1, 1500, 3000): one row in two column chunks; (5, 300, 5000): row blocks of 2, 2 and 1 (838 positions each)
    [((2, 5, 7), 1.0), ((2, 5, 7), 0.6), ((3, 4, 1000), 1.3), ((1, 1500, 3000), 0.6), ((5, 300, 5000), 1.0)],
)
def test_values_and_gradients_match_float64_reference(shape: tuple[int, int, int], temperature: float):
    B, T, V = shape
    generator = torch.Generator().manual_seed(B * T + V)
    logits_BTV = (torch.randn(B, T, V, generator=generator) * 3).requires_grad_(True)
    tokens_BT = torch.randint(0, V, (B, T), generator=generator)
    g_BT, h_BT = torch.randn(B, T, generator=generator), torch.randn(B, T, generator=generator)

    logp_BT, entropy_BT = token_logp_and_entropy(logits_BTV, tokens_BT, temperature)
    assert logp_BT.dtype == entropy_BT.dtype == torch.float32
    ((logp_BT * g_BT).sum() + (entropy_BT * h_BT).sum()).backward()

    reference_leaf = logits_BTV.detach().double().requires_grad_(True)
    want_logp, want_entropy = reference(reference_leaf, tokens_BT, temperature)
    ((want_logp * g_BT.double()).sum() + (want_entropy * h_BT.double()).sum()).backward()
    torch.testing.assert_close(logp_BT.double(), want_logp.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy_BT.double(), want_entropy.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits_BTV.grad.double(), reference_leaf.grad, atol=1e-5, rtol=0)


def test_gradcheck_float64():
    generator = torch.Generator().manual_seed(0)
    logits_BTV = torch.randn(2, 3, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    tokens_BT = torch.randint(0, 5, (2, 3), generator=generator)
    assert torch.autograd.gradcheck(lambda x: token_logp_and_entropy(x, tokens_BT, 0.8), (logits_BTV,))


def test_only_logp_used_and_sliced_logits_view():
    # the trainer slices the response positions out of [B, L, V] logits: a non-contiguous view
    generator = torch.Generator().manual_seed(1)
    full_BLV = torch.randn(2, 9, 11, generator=generator, requires_grad=True)
    tokens_BT = torch.randint(0, 11, (2, 5), generator=generator)
    logp_BT, _ = token_logp_and_entropy(full_BLV[:, 3:8], tokens_BT)
    logp_BT.sum().backward()
    reference_leaf = full_BLV.detach().double().requires_grad_(True)
    reference(reference_leaf[:, 3:8], tokens_BT, 1.0)[0].sum().backward()
    torch.testing.assert_close(full_BLV.grad.double(), reference_leaf.grad, atol=1e-6, rtol=0)


def test_no_grad_mode_for_old_logp():
    with torch.no_grad():
        logp_BT, entropy_BT = token_logp_and_entropy(torch.randn(2, 3, 4, requires_grad=True), torch.zeros(2, 3).long())
    assert not logp_BT.requires_grad and not entropy_BT.requires_grad


def test_bad_temperature_is_a_value_error():
    with pytest.raises(ValueError, match="temperature=0"):
        token_logp_and_entropy(torch.zeros(1, 1, 2), torch.zeros(1, 1).long(), temperature=0)


def _linear_inputs(B: int, T: int, H: int, V: int, dtype: torch.dtype, seed: int):
    generator = torch.Generator().manual_seed(seed)
    hidden_BTH = torch.randn(B, T, H, dtype=dtype, generator=generator).requires_grad_(True)
    weight_VH = (torch.randn(V, H, dtype=dtype, generator=generator) / H**0.5).requires_grad_(True)
    tokens_BT = torch.randint(0, V, (B, T), generator=generator)
    return hidden_BTH, weight_VH, tokens_BT


def test_linear_by_hand():
    # h = (1, 0), W rows (ln 3, 0) and (0, 0): logits z = (ln 3, 0) at tau = 1; p = (3/4, 1/4)
    hidden_BTH, weight_VH = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    logp_BT, entropy_BT, stats = linear_token_logp_and_entropy(hidden_BTH, weight_VH, torch.tensor([[1]]), 1.0, 4)
    torch.testing.assert_close(logp_BT, torch.tensor([[-math.log(4.0)]]), atol=1e-6, rtol=0)  # ln 1/4
    want_entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    torch.testing.assert_close(entropy_BT, torch.tensor([[want_entropy]]), atol=1e-6, rtol=0)
    # the sampled token's logit: z[1] = 0; certainty: logsumexp z - mean z = ln 4 - (ln 3) / 2
    torch.testing.assert_close(stats.logit_BT, torch.tensor([[0.0]]), atol=1e-6, rtol=0)
    want_certainty = math.log(4.0) - math.log(3.0) / 2
    torch.testing.assert_close(stats.certainty_BT, torch.tensor([[want_certainty]]), atol=1e-6, rtol=0)


def test_linear_gradcheck_float64():
    hidden_BTH, weight_VH, tokens_BT = _linear_inputs(2, 5, 6, 13, torch.float64, seed=0)
    assert torch.autograd.gradcheck(
        lambda h, w: linear_token_logp_and_entropy(h, w, tokens_BT, 0.7, 4)[:2], (hidden_BTH, weight_VH)
    )


@pytest.mark.parametrize("chunk_tokens, temperature", [(1, 1.0), (37, 0.6), (256, 1.3), (1000, 1.0)])
def test_linear_chunks_equal_full_logits(chunk_tokens: int, temperature: float):
    """logp, entropy, the logit stats and the gradients w.r.t. the hidden states and the weight equal the full
    B x T x V logits path (token_logp_and_entropy and token_logit_stats on h W^T) within 1e-5, for one-token,
    uneven and whole-input chunks."""
    B, T, H, V = 2, 150, 32, 2000
    hidden_BTH, weight_VH, tokens_BT = _linear_inputs(B, T, H, V, torch.float32, seed=chunk_tokens)
    generator = torch.Generator().manual_seed(1)
    g_BT, h_BT = torch.randn(B, T, generator=generator) / T, torch.randn(B, T, generator=generator) / T

    logp_BT, entropy_BT, stats = linear_token_logp_and_entropy(
        hidden_BTH, weight_VH, tokens_BT, temperature, chunk_tokens
    )
    ((logp_BT * g_BT).sum() + (entropy_BT * h_BT).sum()).backward()

    hidden_ref, weight_ref = hidden_BTH.detach().clone().requires_grad_(), weight_VH.detach().clone().requires_grad_()
    logits_BTV = hidden_ref @ weight_ref.T
    want_logp, want_entropy = token_logp_and_entropy(logits_BTV, tokens_BT, temperature)
    ((want_logp * g_BT).sum() + (want_entropy * h_BT).sum()).backward()
    want_stats = token_logit_stats(logits_BTV.detach(), tokens_BT, temperature)
    # values of magnitude ~7 (ln 2000): float32 rounding, so a relative term as well
    for got, want in (
        (logp_BT, want_logp),
        (entropy_BT, want_entropy),
        (stats.logit_BT, want_stats.logit_BT),
        (stats.certainty_BT, want_stats.certainty_BT),
    ):
        torch.testing.assert_close(got, want.detach(), atol=1e-5, rtol=2e-6)
    torch.testing.assert_close(hidden_BTH.grad, hidden_ref.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(weight_VH.grad, weight_ref.grad, atol=1e-5, rtol=0)
    assert weight_VH.grad.abs().max() > 1e-3  # the comparison is not between zeros
