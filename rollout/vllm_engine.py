"""A colocated vLLM engine (``vllm.LLM`` in this process) behind the same interface; vllm is imported on use.

The engine core runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so ``sync_weights`` hands the trainer's
tensors to the vLLM model's own ``load_weights`` without serialising them.

Log-probs: vLLM 0.32 offers ``raw_logprobs`` (softmax(logits), before temperature) and ``processed_logprobs``
(after temperature and top-k/top-p, renormalised over the nucleus). We use ``processed_logprobs``: it equals the
contract's log softmax(logits / temperature) exactly when top_p == 1 (the training setting); with top_p < 1 each
log-prob is larger by -log(mass of the nucleus), a departure from the transformers engine, which never
renormalises.
"""

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

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
    ):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # colocated: the engine core lives in this process
        import vllm  # optional dependency: only this engine needs it

        self._vllm = vllm
        self.llm = vllm.LLM(
            model=str(model_dir),
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            seed=seed,
            logprobs_mode="processed_logprobs",
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.pad_id = pad_token_id(self.tokenizer)
        self.stop_ids = stop_token_ids(self.tokenizer, load_generation_config(model_dir))

    def sync_weights(self, model: nn.Module) -> None:
        """Copy ``model``'s parameters (Hugging Face names; sharded DTensors are gathered) into the vLLM model."""
        weights = []
        for name, tensor in model.state_dict().items():
            if hasattr(tensor, "full_tensor"):  # FSDP2 shards
                tensor = tensor.full_tensor()
            weights.append((name, tensor.detach()))

        # vLLM 0.32 V1: the worker's in-place reload (a bare `model.load_weights` fails after the first load,
        # whose weight loaders are gone); in-process, the tensors are passed by reference
        with torch.no_grad():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> Rollout:
        """Sample ``params.n`` completions of every prompt; rows p*n .. p*n+n-1 belong to prompt p."""
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
