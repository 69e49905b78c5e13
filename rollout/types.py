"""The records every engine speaks: what to sample (``SamplingParams``) and what was sampled (``Rollout``).

Dimension key: P prompts, G = ``params.n`` samples per prompt, B = P * G rows (prompt p's group is rows
p*G .. p*G+G-1), T response tokens (the longest response in the batch), V vocabulary.
"""

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

EngineKind = Literal["transformers", "vllm"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: ``n`` completions per prompt from softmax(logits / temperature), top-p filtered.

    ``temperature == 0`` is greedy decoding (its log-probs are then those of softmax(logits)). ``seed`` fixes every
    random draw: the same params, prompts and weights give the same rollout.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"SamplingParams.seed must be in [0, 2**63), got {self.seed}")


@dataclass(frozen=True)
class Rollout:
    """Sampled completions; row b belongs to prompt b // n.

    ``logp_BT[b, t]`` = log softmax(logits / temperature)[token] of the sampled token (no top-p renormalisation:
    what the trainer recomputes as the old log-prob); 0 where ``mask_BT`` is False. ``mask_BT`` is True on the
    ``lengths_B[b]`` generated tokens, EOS included when produced; ``truncated_B`` is True when no EOS was produced.
    """

    prompt_ids: list[list[int]]
    tokens_BT: Tensor  # long, right-padded with the pad id
    logp_BT: Tensor  # float32
    mask_BT: Tensor  # bool
    lengths_B: Tensor  # long
    truncated_B: Tensor  # bool
    texts: list[str]  # decoded responses, special tokens stripped

    def __post_init__(self) -> None:
        B, T = self.tokens_BT.shape
        assert self.tokens_BT.dtype == torch.long and self.lengths_B.dtype == torch.long
        assert self.logp_BT.shape == (B, T) and self.logp_BT.dtype == torch.float32
        assert self.mask_BT.shape == (B, T) and self.mask_BT.dtype == torch.bool
        assert self.lengths_B.shape == (B,) and self.truncated_B.shape == (B,) and self.truncated_B.dtype == torch.bool
        assert len(self.texts) == B and B % max(len(self.prompt_ids), 1) == 0

    @property
    def n(self) -> int:
        """Samples per prompt (G)."""
        return len(self.texts) // len(self.prompt_ids)

    @property
    def num_tokens(self) -> int:
        """Generated tokens in this rollout (EOS included), the cost every arm is charged for."""
        return int(self.lengths_B.sum())


class Engine(Protocol):
    """What the trainer and the eval runner need from a generation engine."""

    tokenizer: PreTrainedTokenizerBase

    def generate(self, prompts: list[str], params: SamplingParams) -> Rollout: ...

    def sync_weights(self, model: nn.Module) -> None: ...  # wakes a sleeping engine

    def sleep(self) -> None: ...  # free device memory until the next sync_weights (vLLM sleep mode on CUDA)

    def close(self) -> None: ...  # release the engine (before the process group is destroyed)
