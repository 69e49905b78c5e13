"""``load_engine``: an engine of either kind from a Hugging Face model folder or Hub id (``resolve_model_path``)."""

from pathlib import Path
from typing import assert_never

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rollout.model_dir import is_hub_id
from rollout.transformers_engine import TransformersEngine
from rollout.types import Engine, EngineKind
from rollout.vllm_engine import VLLMEngine

# what an engine or trainer reads: config, tokenizer files, safetensors weights (not .bin / original/ duplicates)
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def resolve_model_path(model: str | Path) -> Path:
    """The local folder of ``model``: a folder is returned as it is; a Hub id (``org/name``) is the snapshot folder
    ``huggingface_hub.snapshot_download`` returns (the local cache only when ``HF_HUB_OFFLINE=1``; weights as
    safetensors). Anything else is a one-line ``ValueError`` naming ``model``. Touches nothing but the Hub cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    text = str(model)
    if not is_hub_id(text):
        raise ValueError(f"model {text!r}: folder not found, and not a Hugging Face Hub id (org/name)")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(text, allow_patterns=HUB_PATTERNS, local_files_only=constants.HF_HUB_OFFLINE))
    except (HFValidationError, HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
        where = "in the local Hub cache (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "on the Hugging Face Hub"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"model {text!r}: folder not found, and not found {where}: {reason}") from None


def load_engine(
    kind: EngineKind,
    model_dir: str | Path,
    device: str | None = None,
    dtype: str | None = None,
    max_batch_rows: int = 512,
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.5,
    seed: int = 0,
    tensor_parallel: int = 1,
    sleep_mode: bool = False,
    weight_sync_bucket_mb: float = 512,
) -> Engine:
    """Load ``model_dir`` (a folder or Hub id, ``resolve_model_path``) into a ``"transformers"`` or ``"vllm"`` engine.

    ``device`` defaults to CUDA when available, else CPU; ``dtype`` to bfloat16 on CUDA and float32 on CPU.
    ``max_batch_rows`` applies to the transformers engine; the rest to vLLM (which runs eagerly on CPU, where CUDA
    graphs do not exist; ``max_model_len`` None is the model's own context length; ``sleep_mode`` takes effect on
    CUDA only, see ``VLLMEngine``).
    """
    model_dir = resolve_model_path(model_dir)
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
                tensor_parallel=tensor_parallel,
                sleep_mode=sleep_mode and device.startswith("cuda"),  # vLLM's sleep mode is CUDA-only
                weight_sync_bucket_mb=weight_sync_bucket_mb,
            )
        case _:
            assert_never(kind)
