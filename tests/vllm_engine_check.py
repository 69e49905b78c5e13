"""Driven by tests/test_rollout_vllm.py inside the CPU vLLM venv: one vLLM start-up, every engine check's data.

usage: python tests/vllm_engine_check.py MODEL_DIR UPDATED_MODEL_DIR OUT_JSON

Generates from MODEL_DIR (twice with one seed, once with top_p < 1), syncs the weights of UPDATED_MODEL_DIR
(loaded with transformers, as a trainer holds them) into the running engine, generates again, and writes every
rollout to OUT_JSON for the test to compare against transformers teacher-forced log-probs.
"""

import json
import os
import sys

PROMPTS = ["12+34=", "7*8=", "100-1=", "The answer is "]


def rollout_record(rollout: "Rollout") -> dict:  # noqa: F821 (imported under the __main__ guard)
    return {
        "prompt_ids": rollout.prompt_ids,
        "tokens": rollout.tokens_BT.tolist(),
        "logp": rollout.logp_BT.tolist(),
        "mask": rollout.mask_BT.tolist(),
        "lengths": rollout.lengths_B.tolist(),
        "truncated": rollout.truncated_B.tolist(),
        "texts": rollout.texts,
    }


def main(model_dir: str, updated_dir: str, out_path: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from rollout import SamplingParams, load_engine

    torch.set_num_threads(1)
    engine = load_engine("vllm", model_dir, device="cpu", dtype="float32", max_model_len=128)
    params = SamplingParams(n=3, temperature=0.8, top_p=1.0, max_new_tokens=24, seed=5)
    first = engine.generate(PROMPTS, params)
    again = engine.generate(PROMPTS, params)
    nucleus = engine.generate(PROMPTS, SamplingParams(n=3, temperature=0.8, top_p=0.5, max_new_tokens=24, seed=5))
    updated = AutoModelForCausalLM.from_pretrained(updated_dir, dtype=torch.float32)
    engine.sync_weights(updated)
    synced = engine.generate(PROMPTS, params)
    record = {
        "temperature": params.temperature,
        "n": params.n,
        "max_new_tokens": params.max_new_tokens,
        "stop_ids": engine.stop_ids,
        "pad_id": engine.pad_id,
        "first": rollout_record(first),
        "again": rollout_record(again),
        "nucleus": rollout_record(nucleus),
        "synced": rollout_record(synced),
    }
    with open(out_path, "w") as file:
        json.dump(record, file)


if __name__ == "__main__":  # the vLLM engine core may spawn processes that re-import this file
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    main(*sys.argv[1:4])
