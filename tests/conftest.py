"""Shared fixtures: the one place tests find the real benchmark data, and the skip rules for optional hardware."""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"


def _data_root() -> Path:
    if os.environ.get("RLABLATE_DATA_DIR"):
        return Path(os.environ["RLABLATE_DATA_DIR"])
    return REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The data folder (``benchmarks/``, ``train/``); a skip on a user's clone, a failure under CI=true."""
    root = _data_root()
    if not (root / "benchmarks" / "math500.jsonl").is_file():
        message = f"benchmark data not found at {root} (set RLABLATE_DATA_DIR)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The embedded warm-started tiny model (built once, about 2 CPU minutes, then cached)."""
    from training.tiny import ensure_tiny_model

    return ensure_tiny_model()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
