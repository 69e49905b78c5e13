"""The vLLM engine for real (CPU build, its own venv): log-probs match transformers, and follow a weight sync.

One vLLM start-up (tests/vllm_engine_check.py in a subprocess) produces every rollout; this file compares them
against teacher-forced forwards of the same weights in the main venv.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from test_rollout import PROMPTS, eos_prone_model, teacher_forced_logp
from transformers import Qwen3ForCausalLM

from training.tiny import char_tokenizer

REPO = Path(__file__).resolve().parents[1]


def vllm_python() -> Path:
    python = Path(os.environ.get("RLABLATE_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
    if not python.is_file():
        message = f"CPU vLLM venv not found at {python} (bash .ci/setup-vllm.sh, or set RLABLATE_VLLM_PYTHON)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return python


def one_optimiser_step(model: Qwen3ForCausalLM) -> None:
    """One AdamW step on the next-token loss of a fixed string: a weight change like the trainer's."""
    tokenizer = char_tokenizer()
    ids = torch.tensor([tokenizer("12+34=46 and 7*8=56")["input_ids"]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    model.eval()


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_logp_match_transformers_and_follow_sync_weights(tmp_path: Path):
    python = vllm_python()
    model = eos_prone_model(tmp_path / "model")
    one_optimiser_step(model)
    model.save_pretrained(tmp_path / "updated")
    before = eos_prone_model()
    env = os.environ | {"VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [str(python), str(REPO / "tests" / "vllm_engine_check.py"), tmp_path / "model", tmp_path / "updated",
         tmp_path / "out.json"],
        env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "out.json").read_text())
    n, temperature = record["n"], record["temperature"]
    tokenizer = char_tokenizer()
    assert record["stop_ids"] == [tokenizer.eos_token_id] and record["pad_id"] == tokenizer.pad_token_id

    def logp_error(rollout: dict, weights: torch.nn.Module, temperature: float = temperature) -> torch.Tensor:
        tokens_BT, mask_BT = torch.tensor(rollout["tokens"]), torch.tensor(rollout["mask"])
        want_BT = teacher_forced_logp(weights, rollout["prompt_ids"], tokens_BT, torch.tensor(rollout["lengths"]), n,
                                      temperature)  # fmt: skip
        return (torch.tensor(rollout["logp"]) - want_BT)[mask_BT]

    first = record["first"]
    assert first["prompt_ids"] == [tokenizer(p)["input_ids"] for p in PROMPTS]
    assert logp_error(first, before).abs().max() < 1e-4
    assert first["tokens"] == record["again"]["tokens"]  # the seed fixes the sample
    # the shared Rollout assembly: EOS ends a row and is masked in; truncated rows ran to max_new_tokens
    assert 0 < sum(first["truncated"]) < len(first["truncated"])
    for tokens, length, truncated, text in zip(
        first["tokens"], first["lengths"], first["truncated"], first["texts"], strict=True
    ):
        row = tokens[:length]
        assert (row[-1] == tokenizer.eos_token_id) != truncated and (
            not truncated or length == record["max_new_tokens"]
        )
        assert all(token == tokenizer.pad_token_id for token in tokens[length:])
        assert text == tokenizer.decode(row, skip_special_tokens=True)
    # after sync_weights the engine samples from the updated model, not the original one
    assert logp_error(record["synced"], model).abs().max() < 1e-4
    assert logp_error(record["synced"], before).abs().max() > 1e-2
    # top_p < 1: vLLM's processed log-probs are renormalised over the nucleus, so never below the tempered ones
    assert logp_error(record["nucleus"], before).min() > -1e-4
