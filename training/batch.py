"""The step batch: the seeded data stream, derived seeds, merging rollouts, and the trainer's log-probs.

Dimension key: P prompts, G samples per prompt, B = P*G rows (prompt p's group is rows p*G .. p*G+G-1),
T response tokens, V vocabulary.
"""

import functools
import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from algorithms import LogitStats, token_logit_stats, token_logp_and_entropy
from rollout import Rollout


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from (seed, step, round, rank, ...): sha256 of the parts, so neighbouring values do not collide."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, num_problems: int) -> tuple[int, ...]:
    generator = torch.Generator().manual_seed(derive_seed(seed, "data", epoch))
    return tuple(torch.randperm(num_problems, generator=generator).tolist())


def data_indices(seed: int, position: int, count: int, num_problems: int) -> list[int]:
    """Problems ``position .. position+count-1`` of the data stream: epoch e is a seeded permutation of all problems.

    A pure function of its arguments, so a checkpoint only stores ``position``."""
    out = []
    for index in range(position, position + count):
        epoch, offset = divmod(index, num_problems)
        out.append(_epoch_order(seed, epoch, num_problems)[offset])
    return out


@dataclass(frozen=True)
class StepBatch:
    """The rows trained on in one step (identical on every rank). ``problem_B`` indexes the training problems."""

    problem_B: list[int]
    prompt_ids_B: list[list[int]]
    tokens_BT: Tensor  # long, right-padded
    mask_BT: Tensor  # bool
    lengths_B: Tensor  # long
    truncated_B: Tensor  # bool
    correct_B: Tensor  # bool
    rewards_B: Tensor  # float32
    texts: list[str]

    def __post_init__(self) -> None:
        B, T = self.tokens_BT.shape
        assert self.mask_BT.shape == (B, T) and self.mask_BT.dtype == torch.bool
        assert self.lengths_B.shape == self.truncated_B.shape == self.correct_B.shape == self.rewards_B.shape == (B,)
        assert len(self.problem_B) == len(self.prompt_ids_B) == len(self.texts) == B

    @classmethod
    def from_rollout(cls, rollout: Rollout, problem_B: list[int], correct_B: Tensor, rewards_B: Tensor) -> "StepBatch":
        """The rows of ``rollout`` (each prompt's ids repeated for its n samples) with their grades and rewards."""
        return cls(
            problem_B=problem_B,
            prompt_ids_B=[ids for ids in rollout.prompt_ids for _ in range(rollout.n)],
            tokens_BT=rollout.tokens_BT,
            mask_BT=rollout.mask_BT,
            lengths_B=rollout.lengths_B,
            truncated_B=rollout.truncated_B,
            correct_B=correct_B,
            rewards_B=rewards_B,
            texts=rollout.texts,
        )

    @property
    def size(self) -> int:
        return len(self.texts)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths_B.sum())

    def select(self, rows: list[int]) -> "StepBatch":
        """The given rows, in that order, with the token width cut to their longest response (at least 1)."""
        index = torch.tensor(rows, dtype=torch.long)
        width = max(int(self.lengths_B[index].max()) if rows else 1, 1)
        return StepBatch(
            problem_B=[self.problem_B[r] for r in rows],
            prompt_ids_B=[self.prompt_ids_B[r] for r in rows],
            tokens_BT=self.tokens_BT[index, :width],
            mask_BT=self.mask_BT[index, :width],
            lengths_B=self.lengths_B[index],
            truncated_B=self.truncated_B[index],
            correct_B=self.correct_B[index],
            rewards_B=self.rewards_B[index],
            texts=[self.texts[r] for r in rows],
        )


def concat(batches: list[StepBatch], pad_id: int) -> StepBatch:
    """Stack batches row-wise, right-padding tokens (with ``pad_id``) and masks (False) to the widest."""
    batches = [b for b in batches if b.size]
    if not batches:
        raise ValueError("concat needs at least one non-empty batch")
    width = max(b.tokens_BT.shape[1] for b in batches)

    def widen(x_BT: Tensor, value: int | bool) -> Tensor:
        return torch.nn.functional.pad(x_BT, (0, width - x_BT.shape[1]), value=value)

    return StepBatch(
        problem_B=[p for b in batches for p in b.problem_B],
        prompt_ids_B=[p for b in batches for p in b.prompt_ids_B],
        tokens_BT=torch.cat([widen(b.tokens_BT, pad_id) for b in batches]),
        mask_BT=torch.cat([widen(b.mask_BT, False) for b in batches]),
        lengths_B=torch.cat([b.lengths_B for b in batches]),
        truncated_B=torch.cat([b.truncated_B for b in batches]),
        correct_B=torch.cat([b.correct_B for b in batches]),
        rewards_B=torch.cat([b.rewards_B for b in batches]),
        texts=[t for b in batches for t in b.texts],
    )


def pad_columns(x_BT: Tensor, width: int) -> Tensor:
    """Right-pad with zeros to ``width`` columns."""
    return torch.nn.functional.pad(x_BT, (0, width - x_BT.shape[1]))


def sequence_logp(
    model: nn.Module,
    prompt_ids_B: list[list[int]],
    tokens_BT: Tensor,
    mask_BT: Tensor,
    temperature: float,
    pad_id: int,
    compute_dtype: torch.dtype,
    logit_stats: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, LogitStats]:
    """(logp_BT, entropy_BT) of the response tokens under ``model`` at the sampling temperature; zero beyond the mask.
    With ``logit_stats`` (no-grad use: UCAS's old policy) also their ``LogitStats``, read from the same logits.

    Rows are laid out as the engine generated them: the prompt left-padded, the response after it, position ids
    counted from each row's first real token (as ``generate`` does), so left padding changes nothing."""
    B, T = tokens_BT.shape
    assert mask_BT.shape == (B, T) and len(prompt_ids_B) == B
    device = next(model.parameters()).device
    width = max(int(mask_BT.sum(-1).max()), 1)
    prompt_len = max(len(ids) for ids in prompt_ids_B)
    input_ids = torch.full((B, prompt_len + width), pad_id, dtype=torch.long)
    attention = torch.zeros((B, prompt_len + width), dtype=torch.long)
    for b, ids in enumerate(prompt_ids_B):
        input_ids[b, prompt_len - len(ids) : prompt_len] = torch.tensor(ids, dtype=torch.long)
        attention[b, prompt_len - len(ids) : prompt_len] = 1
    input_ids[:, prompt_len:] = tokens_BT[:, :width]
    attention[:, prompt_len:] = mask_BT[:, :width].long()
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    with torch.autocast(device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32):
        # logits at positions prompt_len-1 .. prompt_len+width-2 predict the response tokens
        logits = model(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            position_ids=position_ids.to(device),
            logits_to_keep=width + 1,
            use_cache=False,
        ).logits[:, :-1]
    # the logits as they are: token_logp_and_entropy upcasts one chunk at a time (no float32 copy of a bf16 B x T x V)
    logp_BT, entropy_BT = token_logp_and_entropy(logits, tokens_BT[:, :width].to(device), temperature)
    mask = mask_BT[:, :width].to(device)
    logp_BT, entropy_BT = logp_BT.masked_fill(~mask, 0.0), entropy_BT.masked_fill(~mask, 0.0)
    if logit_stats:
        stats = token_logit_stats(logits.detach(), tokens_BT[:, :width].to(device), temperature)
        stats = LogitStats(
            *(pad_columns(x_BT.masked_fill(~mask, 0.0), T) for x_BT in (stats.logit_BT, stats.certainty_BT))
        )
        return pad_columns(logp_BT, T), pad_columns(entropy_BT, T), stats
    return pad_columns(logp_BT, T), pad_columns(entropy_BT, T)
