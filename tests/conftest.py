"""Shared fixtures: tiny demo data, paths to the shared datasets (tests using them skip when absent)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATASETS = SHARED / "datasets"
SPLITS = SHARED / "benchmark" / "splits"


torch.set_num_threads(1)  # also for session/module fixtures, which are set up before the per-test one below


def pytest_collection_modifyitems(config, items):
    """A plain ``pytest`` run leaves out the ``slow`` tests (over ~10 s each; CI runs them with ``-m slow``).
    ``-m EXPR`` decides by itself, and a test file or test named on the command line runs whole, slow or not
    (``pytest tests/test_experiment_smoke.py``). pytest's own ``addopts = -m "not slow"`` would drop those too."""
    if config.option.markexpr:
        return
    named = {(config.invocation_params.dir / arg.split("::")[0]).resolve() for arg in config.args}
    slow = [i for i in items if i.get_closest_marker("slow") and i.path.resolve() not in named]
    if slow:
        config.hook.pytest_deselected(items=slow)
        drop = set(slow)
        items[:] = [i for i in items if i not in drop]


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread per test (restored after it, as some stages set their own count): the tiny test
    models run faster and steadier so than with two OpenMP threads waiting on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LESIONFORGE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The demo dataset written at 32 px (40 samples, 8 lesion-free)."""
    from lesionforge.data.demo import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("demo"), n=40, size=32, seed=0)


@pytest.fixture(scope="session")
def demo_arrays():
    """In-memory demo pairs at 32 px: images uint8 (N, 32, 32, 3), masks uint8 (N, 32, 32)."""
    from lesionforge.data.demo import make_demo_arrays

    return make_demo_arrays(n=40, size=32, seed=0)


def need_dataset(name: str) -> Path:
    path = DATASETS / name
    if not path.is_dir():
        pytest.skip(f"shared dataset {name!r} not found at {path} (../shared/datasets is absent)")
    return path


def load_benchmark(name: str):
    """A script of ``benchmarks/`` (not a package) imported as a module, e.g. ``load_benchmark("speed")``."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"lesionforge_benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """A local Ray instance with 2 worker CPUs for the whole session (it takes ~20 s to start); yields the
    fault folder its workers watch (see ``lesionforge.raycluster.FAULT_DIR_ENV``)."""
    import os

    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'lesionforge[ray]')")
    from lesionforge.raycluster import FAULT_DIR_ENV

    faults = tmp_path_factory.mktemp("ray-faults")
    # the workers inherit the environment Ray starts with: the fault folder and the tests' isolated cache
    env = {FAULT_DIR_ENV: str(faults), "LESIONFORGE_CACHE": str(tmp_path_factory.getbasetemp() / "cache")}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    try:
        yield faults
    finally:
        ray.shutdown()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
