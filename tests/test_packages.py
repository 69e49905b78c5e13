"""Every top-level package imports and exports exactly its public interface."""

import importlib

import pytest

PUBLIC = {
    "algorithms": [
        "ALGORITHMS",
        "AdvantageOutput",
        "Algorithm",
        "LogitStats",
        "LossOutput",
        "Normalizers",
        "PRESET_OPTIM",
        "advantages_with_metrics",
        "aggregate",
        "compute_advantages",
        "get_algorithm",
        "group_filter",
        "policy_loss",
        "overlong_shaped",
        "shape_rewards",
        "linear_token_logp_and_entropy",
        "token_logit_stats",
        "token_logp_and_entropy",
    ],
    "evals": [
        "BENCHMARKS",
        "GROUPS",
        "Benchmark",
        "Grade",
        "Problem",
        "Protocol",
        "benchmark_metrics",
        "grade",
        "grade_many",
        "grader_audit",
        "load_benchmark",
        "maj_at_k",
        "pass_at_k",
        "render_prompt",
        "resolve_benchmarks",
    ],
    "rollout": [
        "Engine",
        "EngineKind",
        "Rollout",
        "SamplingParams",
        "TransformersEngine",
        "VLLMEngine",
        "load_engine",
        "resolve_model_path",
    ],
    "training": [
        "PROFILES",
        "RunConfig",
        "apply_overrides",
        "char_tokenizer",
        "ensure_tiny_model",
        "from_dict",
        "paper",
        "random_tiny_model",
        "tiny",
        "to_dict",
        "train",
        "with_algorithm",
    ],
    "sweeps": ["Arm", "Run", "Shared", "Sweep", "TrainJob", "plan", "sweep_runs", "write_plan"],
    "analysis": [
        "Results",
        "Table",
        "build_table",
        "load_results",
        "mean_ci",
        "paired_diff",
        "run_scores",
        "save_results",
        "to_latex",
        "to_markdown",
    ],
}


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_package_exports_its_interface(package: str):
    module = importlib.import_module(package)
    assert module.__doc__ and len(module.__doc__.split()) > 20, f"{package} needs a docstring saying what it owns"
    assert sorted(getattr(module, "__all__", [])) == sorted(PUBLIC[package])
    for name in PUBLIC[package]:
        assert getattr(module, name) is not None
