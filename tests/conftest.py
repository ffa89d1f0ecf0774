"""pytest fixtures; the builders they call live in pipeline.testing (import them from there)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before faiss, sklearn or torch load OpenMP

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from pipeline.testing import make_timit  # noqa: E402

# The original study's published data, beside the repository.
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "original_lp_test"


@pytest.fixture
def timit_dir(tmp_path: Path) -> Path:
    return make_timit(tmp_path / "timit")


@pytest.fixture
def warehouse_dir(tmp_path: Path) -> Path:
    return tmp_path / "wh"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The golden reference folder; skipped where it is absent, a failure under CI."""
    if not (REFERENCE / "frames.parquet").is_file():
        message = f"golden reference data not found at {REFERENCE}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: the golden test must run)")
        pytest.skip(message)
    return REFERENCE
