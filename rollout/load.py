"""``load_engine``: an engine of either kind from a saved Hugging Face model folder."""

from pathlib import Path
from typing import assert_never

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rollout.transformers_engine import TransformersEngine
from rollout.types import Engine, EngineKind
from rollout.vllm_engine import VLLMEngine


def load_engine(
    kind: EngineKind,
    model_dir: str | Path,
    device: str | None = None,
    dtype: str | None = None,
    max_batch_rows: int = 512,
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.5,
    seed: int = 0,
) -> Engine:
    """Load ``model_dir`` into a ``"transformers"`` or ``"vllm"`` engine.

    ``device`` defaults to CUDA when available, else CPU; ``dtype`` to bfloat16 on CUDA and float32 on CPU.
    ``max_batch_rows`` applies to the transformers engine; ``max_model_len``, ``gpu_memory_utilization`` and ``seed``
    to vLLM (which runs eagerly on CPU, where CUDA graphs do not exist; ``max_model_len`` None is the model's
    own context length).
    """
    if not Path(model_dir).is_dir():
        raise ValueError(f"model directory not found: {model_dir}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    match kind:
        case "transformers":
            tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device)
            return TransformersEngine(model.eval(), tokenizer, max_batch_rows=max_batch_rows)
        case "vllm":
            return VLLMEngine(
                model_dir,
                dtype=dtype,
                max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization,
                enforce_eager=device == "cpu",
                seed=seed,
            )
        case _:
            assert_never(kind)
