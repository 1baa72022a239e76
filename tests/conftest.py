"""Shared test settings: quiet TensorFlow, deterministic seeds, paths to shared golden data."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The papers' reference outputs are generated outside the repository (docs/design.md section 9).
GOLDEN_DIR = pathlib.Path(os.environ.get("KVID_GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden"))


def require_golden_dir() -> pathlib.Path:
    """The golden directory; skips the test when it is absent, or fails it when the environment
    sets KVID_REQUIRE_GOLDEN=1 (CI does: there the parity tests must run)."""
    if GOLDEN_DIR.is_dir():
        return GOLDEN_DIR
    message = (
        f"golden data not found at {GOLDEN_DIR}: the parity tests need the reference outputs "
        "(set KVID_GOLDEN_DIR to their directory)"
    )
    if os.environ.get("KVID_REQUIRE_GOLDEN") == "1":
        pytest.fail(message + "; KVID_REQUIRE_GOLDEN=1 makes this a failure")
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _seed():
    from kvid.backend import keras

    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


@pytest.fixture
def golden_dir():
    return require_golden_dir()
