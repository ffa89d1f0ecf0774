"""The package as users install it (a wheel, `pip install .`, a git URL) runs its own queries."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import sys
import pipeline, pipeline.sql as S, pipeline.stages.check as C
assert pipeline.__file__.startswith(sys.argv[1]), pipeline.__file__
assert S.SQL_DIR.is_relative_to(sys.argv[1]), S.SQL_DIR
text = S.load_query("phone_counts")
assert "select" in text.lower()
checks = sorted(p.stem for p in C.CHECKS_DIR.glob("*.sql"))
assert "frames_unique" in checks, checks
print(len(list(S.SQL_DIR.glob("*.sql"))), len(checks))
"""


@pytest.mark.slow
def test_wheel_ships_the_queries(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out)], check=True, cwd=tmp_path, capture_output=True, timeout=600)
    wheel = next(out.glob("w2v2_layers-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "pipeline/_sql/phone_counts.sql" in names and "pipeline/_sql/checks/frames_unique.sql" in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    done = subprocess.run([sys.executable, "-c", PROBE, str(target)], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    n_queries, n_checks = map(int, done.stdout.split())
    assert n_queries == len(list((REPO / "sql").glob("*.sql")))
    assert n_checks == len(list((REPO / "sql" / "checks").glob("*.sql")))
