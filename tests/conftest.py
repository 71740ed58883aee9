"""Shared fixtures: a temporary T2_HOME, a tiny random Llama folder, the real SmolLM2 (slow), and the bwrap skip."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sandbox_skip import NO_BWRAP, bwrap_installed  # noqa: E402
from tiny import build_tiny_llama  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VMLU_DIR = REPO.parent / "shared" / "data" / "vmlu"


@pytest.fixture(autouse=True)
def _needs_bwrap(request):
    """Skip tests marked `needs_bwrap` where bubblewrap is missing; skipped here, they fold into one summary line."""
    if request.node.get_closest_marker("needs_bwrap") is not None and not bwrap_installed():
        pytest.skip(NO_BWRAP)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Report every bwrap skip at one place (the detection), so `-ra` folds them into one line: SKIPPED [n] ...: reason."""
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple) and report.longrepr[2] == f"Skipped: {NO_BWRAP}":
        report.longrepr = (bwrap_installed.__code__.co_filename, bwrap_installed.__code__.co_firstlineno,
                           report.longrepr[2])
    return report


@pytest.fixture(autouse=True)
def _t2_home(tmp_path_factory, monkeypatch, request):
    """Each test gets its own cache root, except slow ones, which share the user's (model conversion is costly)."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("T2_HOME", str(tmp_path_factory.mktemp("t2_home")))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture()
def tiny(tiny_model_dir):
    """(model, tokenizer) of the tiny random Llama, float32 on CPU."""
    from transformer_squared.models.load import load_model

    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct, float32 on CPU (shared by the slow tests)."""
    from transformer_squared.models.load import load_model

    return load_model("smollm2-135m-instruct", device="cpu")


@pytest.fixture()
def kill_rng(request) -> random.Random:
    """A seeded RNG for kill points: the seed is printed (shown with a failure) and T2_TEST_SEED replays it."""
    seed = int(os.environ.get("T2_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"{request.node.name}: random kill points from seed {seed} (replay: T2_TEST_SEED={seed} pytest ...)")
    return random.Random(seed)
