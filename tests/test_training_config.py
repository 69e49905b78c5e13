"""The run config: JSON round-trip, typed dotted overrides, one-line errors naming the culprit."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from algorithms import ALGORITHMS
from training.config import (
    PROFILES,
    TINY_BUILD_FILE,
    ModelConfig,
    apply_overrides,
    config_hash,
    from_dict,
    paper,
    tiny,
    to_dict,
    with_algorithm,
)
from training.train import main, parse_args

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_profiles_round_trip_through_json(profile: str):
    config = PROFILES[profile]()
    again = from_dict(json.loads(json.dumps(to_dict(config))))
    assert again == config
    assert config_hash(again) == config_hash(config)


def test_every_preset_round_trips_with_its_fields():
    for name in ALGORITHMS:
        config = with_algorithm(tiny(), name)
        again = from_dict(json.loads(json.dumps(to_dict(config))))
        assert again.preset == name and again.algorithm == ALGORITHMS[name]


def test_overrides_are_typed_and_the_preset_switch_comes_first():
    config = apply_overrides(
        tiny(),
        ["--algorithm.clip_high=0.3", "--algorithm=dapo", "--optim.lr=1e-5", "--eval.n=null", "--tag=007",
         "--model.path=/tmp/model", "--rollout.group_size=4", "--logging.progress_bar=false"],
    )  # fmt: skip
    assert config.preset == "dapo"
    assert config.algorithm == dataclasses.replace(ALGORITHMS["dapo"], clip_high=0.3)  # applied after the switch
    assert config.optim.lr == 1e-5 and isinstance(config.optim.lr, float)
    assert config.eval.n is None
    assert config.tag == "007"  # a str field keeps digits as text
    assert config.model.path == "/tmp/model" and config.model.prompt_template == "base_boxed"
    assert config.rollout.group_size == 4 and config.logging.progress_bar is False
    assert tiny().model.prompt_template == "tiny"


def test_a_model_folder_built_by_training_tiny_gets_the_tiny_template(tmp_path: Path):
    built = ModelConfig(path=str(tmp_path))
    assert built.prompt_template == "base_boxed"  # a folder that training.tiny did not build: a base model's
    (tmp_path / TINY_BUILD_FILE).write_text("{}")
    assert built.prompt_template == "tiny"
    assert dataclasses.replace(built, template="chat_boxed").prompt_template == "chat_boxed"  # named wins


@pytest.mark.parametrize(
    "override, named",
    [
        ("--optim.lr=abc", "optim.lr"),
        ("--optim.learning_rate=1", "optim.learning_rate"),
        ("--steps=1.5", "steps"),
        ("--rollout.engine=sglang", "rollout.engine"),
        ("--algorithm=ppo", "ppo"),
        ("--algorithm.clip_high=high", "algorithm.clip_high"),
        ("--algorithm.clip_low=-0.1", "clip_low"),
        ("--algorithm.credit=magic", "credit"),
        ("--rollout.group_size=0", "rollout.group_size"),
        ("--optim.mini_batches=7", "optim.mini_batches"),  # 16 x 8 = 128 rows do not split into 7
        ("--model=x", "model"),
        ("--eval.dev_n=0", "eval.dev_n"),
        ("--eval.n=-1", "eval.n"),
        ("--eval.dev_top_p=1.5", "eval.dev_top_p"),
        ("--eval.temperature=-0.1", "eval.temperature"),
        ("steps=3", "steps=3"),
    ],
)
def test_bad_overrides_name_the_culprit(override: str, named: str):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        apply_overrides(tiny(), [override])


def test_unknown_key_in_a_config_file_is_named():
    data = to_dict(tiny())
    data["rollout"]["n_samples"] = 4
    with pytest.raises(ValueError, match=r"rollout\.n_samples"):
        from_dict(data)


def test_config_file_meta_is_kept_and_overrides_apply(tmp_path: Path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(to_dict(paper()) | {"meta": {"run_id": "r1", "arm": "a"}}))
    config, resume, meta = parse_args(["--config", str(path), "--steps=2", "--resume", "never"])
    assert config == dataclasses.replace(paper(), steps=2)
    assert resume == "never" and meta == {"run_id": "r1", "arm": "a"}


def test_run_id_names_preset_tag_seed_and_hash():
    config = dataclasses.replace(with_algorithm(tiny(), "dapo"), tag="x", seed=3)
    assert config.run_id == f"dapo-x-s3-{config_hash(config)[:6]}"
    assert config_hash(dataclasses.replace(config, out_dir="/elsewhere")) == config_hash(config)
    assert config_hash(dataclasses.replace(config, seed=4)) != config_hash(config)


def test_main_reports_a_bad_value_in_one_line(capsys: pytest.CaptureFixture[str]):
    assert main(["--optim.lr=fast"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: optim.lr='fast' is not of type float"


def test_cli_bad_key_exits_2_without_traceback():
    out = subprocess.run(
        [sys.executable, "-m", "training.train", "--rollout.temprature=0.7"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: unknown config key 'rollout.temprature'"]
