"""Model paths (a folder or a Hub id, resolved offline from a Hub cache built here), weight-sync buckets by hand, and
the placement arithmetic (rollout groups, config checks). No vLLM needed: the vLLM runs are test_training_vllm.py."""

import json
from pathlib import Path

import pytest
import torch

from rollout import SamplingParams, load_engine, resolve_model_path
from rollout.vllm_engine import bucket_bytes, weight_buckets
from training.config import RunConfig, apply_overrides, tiny
from training.distributed import DistInfo, rollout_group
from training.tiny import random_tiny_model

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face Hub cache holding ``acme/tiny-model`` (models--acme--tiny-model/snapshots/<sha>, refs/main),
    with the Hub offline: what a compute node without network sees after a download on the login node."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-model"
    random_tiny_model(repo / "snapshots" / SHA, seed=3)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub reads both variables once, at import (already done by transformers): set what it read
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_hub_id_resolves_to_its_cached_snapshot_offline(hub_cache: Path, tmp_path: Path):
    snapshot = hub_cache / "models--acme--tiny-model" / "snapshots" / SHA
    assert resolve_model_path("acme/tiny-model") == snapshot
    assert resolve_model_path(snapshot) == snapshot  # a folder is taken as it is
    engine = load_engine("transformers", "acme/tiny-model", device="cpu")
    assert engine.generate(["12+3="], SamplingParams(n=2, max_new_tokens=4)).tokens_BT.shape[0] == 2
    for bad, why in [
        ("acme/missing-model", "not found in the local Hub cache"),
        (str(tmp_path / "no-such-folder"), "folder not found"),
        ("../up/there", "not a Hugging Face Hub id"),
    ]:
        with pytest.raises(ValueError, match=why) as error:
            resolve_model_path(bad)
        assert bad in str(error.value) and "\n" not in str(error.value)


def test_evals_run_and_train_take_a_hub_id(hub_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    from evals.run import main as eval_main
    from training.train import ConfigError, train

    summary = eval_main(["--model", "acme/tiny-model", "--benchmarks", "tiny_div", "--limit", "1", "--n", "1",
                         "--max-new-tokens", "4", "--out", str(tmp_path / "eval"), "--device", "cpu"])  # fmt: skip
    assert summary["benchmarks"]["tiny_div"]["samples"] == 1 and summary["model"] == "acme/tiny-model"
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["--model", "acme/missing-model", "--out", str(tmp_path / "eval2")])
    assert exit_info.value.code == 2 and "acme/missing-model" in capsys.readouterr().err
    settings = {
        "model.path": "acme/tiny-model", "model.template": "tiny", "out_dir": str(tmp_path / "run"), "steps": 1,
        "data.train": "tiny_div",
        "eval.every": 0, "eval.test": "tiny_div", "eval.n": 1, "eval.max_problems": 1, "eval.max_new_tokens": 4,
        "rollout.prompts_per_step": 2, "rollout.group_size": 2, "rollout.max_new_tokens": 4,
        "logging.progress_bar": False,
    }  # fmt: skip
    run = train(apply_overrides(tiny(), [f"--{key}={value}" for key, value in settings.items()]))
    assert json.loads((run / "summary.json").read_text())["steps"] == 1
    with pytest.raises(ConfigError, match="acme/missing-model"):
        train(apply_overrides(tiny(), ["--model.path=acme/missing-model", f"--out_dir={tmp_path / 'run2'}"]))


def test_weight_buckets_by_hand():
    """float32 tensors of 40, 80, 20, 200, 12 bytes (10, 20, 5, 50, 3 elements), limit 100 bytes: 40 + 80 > 100
    closes [a]; 80 + 20 = 100 fits; d (200) alone exceeds the limit and travels alone; then [e]."""
    sizes = {"a": 10, "b": 20, "c": 5, "d": 50, "e": 3}
    named = {name: torch.arange(n, dtype=torch.float32) / 7 for name, n in sizes.items()}
    buckets = list(weight_buckets(iter(named.items()), torch.float32, 100))
    assert [[name for name, _ in bucket] for bucket in buckets] == [["a"], ["b", "c"], ["d"], ["e"]]
    assert [bucket_bytes(bucket) for bucket in buckets] == [40, 100, 200, 12]
    # cast first, then counted: bfloat16 halves every size (20, 40, 10, 100, 6): [a b c] = 70, [d] = 100, [e] = 6
    buckets = list(weight_buckets(iter(named.items()), torch.bfloat16, 100))
    assert [[name for name, _ in bucket] for bucket in buckets] == [["a", "b", "c"], ["d"], ["e"]]
    assert [bucket_bytes(bucket) for bucket in buckets] == [70, 100, 6]
    for name, tensor in (pair for bucket in buckets for pair in bucket):
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, named[name].to(torch.bfloat16))


def test_weight_buckets_stream():
    """The source is read one tensor ahead of the bucket being handed over, never all at once."""
    events = []

    def source():
        for index in range(6):
            events.append(f"read {index}")
            yield str(index), torch.zeros(25)  # 100 bytes each; limit 200: two per bucket

    for bucket in weight_buckets(source(), torch.float32, 200):
        events.append("send " + "".join(name for name, _ in bucket))
    assert events == ["read 0", "read 1", "read 2", "send 01", "read 3", "read 4", "send 23", "read 5", "send 45"]


@pytest.mark.parametrize(
    "world, tp, rank, want",
    [
        (1, 1, 0, (0, 1, 0, 1)),
        (2, 1, 1, (1, 2, 0, 1)),  # tensor parallel 1: every rank its own group
        (4, 2, 1, (0, 2, 1, 2)),  # ranks 0,1 | 2,3: rank 1 is member 1 of group 0
        (8, 2, 6, (3, 4, 0, 2)),
        (8, 4, 5, (1, 2, 1, 4)),
    ],
)
def test_rollout_groups_are_consecutive_ranks(world: int, tp: int, rank: int, want: tuple[int, int, int, int]):
    group = rollout_group(DistInfo(rank, world, rank, torch.device("cpu")), tp)
    assert (group.index, group.count, group.member, group.size) == want


def test_group_members_split_the_group_prompts_once():
    """5 prompts over 2 members: 0..1 (5*0//2 .. 5*1//2) and 2..4 (5*1//2 .. 5*2//2); 1 prompt over 2: 0 and 0..0."""
    parts = [rollout_group(DistInfo(r, 2, r, torch.device("cpu")), 2).my_part(5) for r in range(2)]
    assert [list(p) for p in parts] == [[0, 1], [2, 3, 4]]
    parts = [rollout_group(DistInfo(r, 2, r, torch.device("cpu")), 2).my_part(1) for r in range(2)]
    assert [list(p) for p in parts] == [[], [0]]
    with pytest.raises(ValueError, match="vllm_tensor_parallel=4 must divide the 6 ranks"):
        rollout_group(DistInfo(0, 6, 0, torch.device("cpu")), 4)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--rollout.vllm_tensor_parallel=0"], "rollout.vllm_tensor_parallel=0 must be > 0"),
        (["--rollout.weight_sync_bucket_mb=0"], "rollout.weight_sync_bucket_mb=0.0 must be > 0"),
        (["--rollout.vllm_gpu_memory_utilization=1.0"], "must be in \\(0, 1\\)"),
    ],
)
def test_vllm_fields_are_checked(overrides: list[str], message: str):
    with pytest.raises(ValueError, match=message):
        apply_overrides(RunConfig(), overrides)
    config = apply_overrides(RunConfig(), ["--rollout.engine=vllm", "--rollout.vllm_tensor_parallel=2"])
    assert config.rollout.ranks_per_engine == 2 and config.rollout.vllm_sleep_mode
    config = apply_overrides(config, ["--rollout.engine=transformers"])  # tensor parallelism is vLLM's
    assert config.rollout.ranks_per_engine == 1


def test_a_launch_that_does_not_fit_is_a_config_error(tmp_path: Path):
    """Tensor parallel 2 on one process: a one-line error before the run folder is created."""
    from training.train import ConfigError, train

    config = apply_overrides(
        tiny(), ["--rollout.engine=vllm", "--rollout.vllm_tensor_parallel=2", f"--out_dir={tmp_path / 'run'}"]
    )
    with pytest.raises(ConfigError, match="vllm_tensor_parallel=2 must divide the 1 ranks"):
        train(config)
    assert not (tmp_path / "run").exists()
