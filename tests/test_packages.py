"""Every top-level package imports and exports exactly its public interface."""

import importlib

import pytest

PUBLIC = {
    "algorithms": [],
    "evals": [],
    "rollout": [],
    "training": [],
    "sweeps": [],
    "analysis": [],
}


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_package_exports_its_interface(package: str):
    module = importlib.import_module(package)
    assert module.__doc__ and len(module.__doc__.split()) > 20, f"{package} needs a docstring saying what it owns"
    assert sorted(getattr(module, "__all__", [])) == sorted(PUBLIC[package])
    for name in PUBLIC[package]:
        assert getattr(module, name) is not None
