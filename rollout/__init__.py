"""Generation engines behind one interface: templated prompts in, completions with tokens and behaviour log-probs out.

Owns the transformers engine (batched sampling with a KV cache, CPU and GPU) and the optional vLLM engine, which
share everything they can. Knows no algorithm and no grader: imports torch and transformers (vllm when asked),
nothing of ours.
"""

from rollout.load import load_engine, resolve_model_path
from rollout.transformers_engine import TransformersEngine
from rollout.types import Engine, EngineKind, Rollout, SamplingParams
from rollout.vllm_engine import VLLMEngine  # imports vllm only when an engine is built

__all__ = [
    "Engine",
    "EngineKind",
    "Rollout",
    "SamplingParams",
    "TransformersEngine",
    "VLLMEngine",
    "load_engine",
    "resolve_model_path",
]
