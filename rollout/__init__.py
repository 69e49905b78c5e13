"""Generation engines behind one interface: templated prompts in, completions with tokens and behaviour log-probs out.

Owns the transformers engine (batched sampling with a KV cache, CPU and GPU) and the optional vLLM engine, which
share everything they can. Knows no algorithm and no grader: imports torch and transformers (vllm when asked),
nothing of ours.
"""

__all__: list[str] = []
