"""A colocated vLLM engine (``vllm.LLM`` in this process) behind the same interface; vllm is imported on use.

Placement. Under torchrun (``WORLD_SIZE`` > 1) every rank builds its own engine with vLLM's external launcher
(``distributed_executor_backend="external_launcher"``): one worker per process, on the rank's own device
(``cuda:LOCAL_RANK``), joining the trainer's process group. ``tensor_parallel`` consecutive ranks form one tensor-
parallel engine; they must be given the same prompts and seeds (vLLM's torchrun examples; TRL's colocate mode).
Without torchrun the engine is single-process (vLLM's default executor). The engine core always runs in-process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so ``sync_weights`` hands tensors to the worker without serialising them.

Memory hand-off (CUDA). With ``sleep_mode`` the engine is built with ``enable_sleep_mode=True``; the trainer calls
``sleep()`` after the rollout (weights offloaded to host memory, KV cache freed) and ``sync_weights`` then wakes
the weights, loads the new ones, and wakes the KV cache (verl's and TRL's order): the update runs with the GPU free
of vLLM's share. The CUDA-only calls are ``_cuda_hand_off``; on CPU ``_no_hand_off`` stands in (nothing to free).

Streamed weight sync. ``sync_weights`` walks the trainer's parameters in order and hands them over in buckets of at
most ``weight_sync_bucket_mb`` (``weight_buckets``): each tensor is cast to the engine's dtype first, then (FSDP2)
gathered with ``full_tensor()`` only when its bucket is built, so at most one bucket of full tensors exists at a
time (plus the parameters of the one vLLM layer that is still waiting for the rest of its weights).

Log-probs: vLLM 0.32 offers ``raw_logprobs`` (softmax(logits), before temperature) and ``processed_logprobs``
(after temperature and top-k/top-p, renormalised over the nucleus). We use ``processed_logprobs``: it equals the
contract's log softmax(logits / temperature) exactly when top_p == 1 (the training setting); with top_p < 1 each
log-prob is larger by -log(mass of the nucleus), a departure from the transformers engine, which never
renormalises.
"""

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from rollout.common import (
    encode_prompts,
    finish_rollout,
    load_generation_config,
    pad_right,
    pad_token_id,
    request_seeds,
    stop_token_ids,
)
from rollout.types import Rollout, SamplingParams

HandOff = Literal["sleep", "wake_weights", "wake_kv_cache"]


def _cuda_hand_off(llm: Any, stage: HandOff) -> None:
    """vLLM sleep mode (CUDA only: vLLM's cumem allocator). Level 1 keeps a host copy of the weights (verl's and
    TRL's colocate setting), so an engine woken without a sync still holds valid weights."""
    match stage:
        case "sleep":
            llm.sleep(level=1)
        case "wake_weights":
            llm.wake_up(tags=["weights"])
        case "wake_kv_cache":
            llm.wake_up(tags=["kv_cache"])


def _no_hand_off(llm: Any, stage: HandOff) -> None:
    """The CPU twin of ``_cuda_hand_off`` (also CUDA with sleep mode off): vLLM has no sleep mode on CPU, and its KV
    cache there is a fixed host buffer (``VLLM_CPU_KVCACHE_SPACE``), so there is nothing to free or restore."""


def weight_buckets(
    named: Iterator[tuple[str, Tensor]], dtype: torch.dtype, limit_bytes: int
) -> Iterator[list[tuple[str, Tensor]]]:
    """Full tensors in ``dtype``, in order, grouped so each bucket holds at most ``limit_bytes`` bytes.

    A tensor larger than ``limit_bytes`` travels alone (a bucket of one). Each sharded tensor (an FSDP2 DTensor) is
    cast first and gathered (``full_tensor()``, a collective: every rank must walk the same tensors) only when it
    joins the bucket being built, so a gathered tensor is counted before the next one is gathered."""
    bucket: list[tuple[str, Tensor]] = []
    size = 0
    for name, tensor in named:
        tensor = tensor.detach().to(dtype)  # cast before gathering: half the traffic for bfloat16
        nbytes = tensor.numel() * tensor.element_size()  # the full tensor's bytes (numel is global for a DTensor)
        if bucket and size + nbytes > limit_bytes:
            yield bucket
            bucket, size = [], 0
        if hasattr(tensor, "full_tensor"):  # FSDP2 shard
            tensor = tensor.full_tensor()
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def bucket_bytes(bucket: list[tuple[str, Tensor]]) -> int:
    return sum(tensor.numel() * tensor.element_size() for _, tensor in bucket)


class VLLMEngine:
    """Samples with ``vllm.LLM(model_dir)``; ``sync_weights(model)`` loads the trainer's current weights into it."""

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str = "float32",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.5,
        enforce_eager: bool = False,
        seed: int = 0,
        tensor_parallel: int = 1,
        sleep_mode: bool = False,
        weight_sync_bucket_mb: float = 512,
    ):
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size % tensor_parallel:
            raise ValueError(f"vLLM tensor parallel size {tensor_parallel} must divide the {world_size} ranks")
        if tensor_parallel > 1 and world_size == 1:
            raise ValueError(f"vLLM tensor parallel size {tensor_parallel} needs torchrun with as many ranks or more")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # colocated: the engine core lives in this process
        import vllm  # optional dependency: only this engine needs it

        self._vllm = vllm
        self.llm = vllm.LLM(
            model=str(model_dir),
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            seed=seed,  # the same on every rank: a tensor-parallel group must sample alike
            logprobs_mode="processed_logprobs",
            tensor_parallel_size=tensor_parallel,
            # under torchrun: one worker per rank on cuda:LOCAL_RANK, in the trainer's process group
            distributed_executor_backend="external_launcher" if world_size > 1 else None,
            enable_sleep_mode=sleep_mode,
        )
        self._hand_off: Callable[[Any, HandOff], None] = _cuda_hand_off if sleep_mode else _no_hand_off
        self.asleep = False
        self.dtype = getattr(torch, dtype)
        self.bucket_limit_bytes = int(weight_sync_bucket_mb * 2**20)
        self.last_sync_bucket_bytes: list[int] = []  # bytes of each bucket of the last sync (for tests and logs)
        self.tokenizer = self.llm.get_tokenizer()
        self.pad_id = pad_token_id(self.tokenizer)
        self.stop_ids = stop_token_ids(self.tokenizer, load_generation_config(model_dir))

    def sleep(self) -> None:
        """Free the engine's device memory (weights to host, KV cache dropped) until the next ``sync_weights``."""
        if not self.asleep:
            self._hand_off(self.llm, "sleep")
            self.asleep = True

    def sync_weights(self, model: nn.Module) -> None:
        """Load ``model``'s parameters (Hugging Face names; FSDP2 shards gathered bucket by bucket) into the engine.

        Collective under FSDP2: every rank calls it with its shard of the same model. Wakes a sleeping engine:
        weights, then the new parameters, then the KV cache."""
        if self.asleep:
            self._hand_off(self.llm, "wake_weights")
        self.last_sync_bucket_bytes = []

        def stream() -> Iterator[tuple[str, Tensor]]:
            # the state dict (references, nothing copied): vLLM 0.32's in-place reload wants a tied lm_head too
            for bucket in weight_buckets(iter(model.state_dict().items()), self.dtype, self.bucket_limit_bytes):
                self.last_sync_bucket_bytes.append(bucket_bytes(bucket))
                yield from bucket

        # vLLM 0.32 V1: the worker's in-place reload (a bare `model.load_weights` fails after the first load, whose
        # weight loaders are gone); in-process, the iterator is consumed by the worker as vLLM loads, one bucket
        # gathered at a time
        with torch.no_grad():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream()})
        if self.asleep:
            self._hand_off(self.llm, "wake_kv_cache")
            self.asleep = False
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights

    def close(self) -> None:
        """Shut the engine down now (vLLM then tears down its process groups and the default one). Left to vLLM's
        exit hook, that teardown would find the trainer's process group already destroyed."""
        self.llm.llm_engine.engine_core.shutdown()

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> Rollout:
        """Sample ``params.n`` completions of every prompt; rows p*n .. p*n+n-1 belong to prompt p."""
        if self.asleep:
            raise RuntimeError("VLLMEngine.generate: the engine is asleep; sync_weights wakes it")
        prompt_ids = encode_prompts(self.tokenizer, prompts)
        requests = [
            self._vllm.SamplingParams(
                n=params.n,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                seed=seed,  # vLLM seeds sample j of this request with seed + j
                logprobs=0,  # the sampled token's log-prob only
                stop_token_ids=self.stop_ids,
                detokenize=False,  # decoding is shared with the transformers engine
            )
            for seed in request_seeds(params.seed, len(prompt_ids))
        ]
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in prompt_ids], sampling_params=requests, use_tqdm=False
        )
        tokens, logps, ended = [], [], []
        for output in outputs:
            for completion in sorted(output.outputs, key=lambda completion: completion.index):
                token_ids = list(completion.token_ids)
                tokens.append(token_ids)
                logps.append([step[token].logprob for step, token in zip(completion.logprobs, token_ids, strict=True)])
                ended.append(bool(token_ids) and token_ids[-1] in self.stop_ids)
        lengths_B = torch.tensor([len(row) for row in tokens], dtype=torch.long)
        return finish_rollout(
            prompt_ids,
            pad_right(tokens, self.pad_id, torch.long),
            pad_right(logps, 0.0, torch.float32),
            lengths_B,
            torch.tensor(ended, dtype=torch.bool),
            self.tokenizer,
            self.pad_id,
        )
