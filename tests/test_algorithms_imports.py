"""pipeline.algorithms is pure: importing every module of it loads no storage, stage, query or report code."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pipeline.algorithms

STORAGE = ("pipeline.warehouse", "pipeline.stages", "pipeline.sql", "pipeline.report", "pipeline.cli", "duckdb")


def test_algorithms_import_nothing_from_storage():
    modules = sorted(f"pipeline.algorithms.{m.name}" for m in pkgutil.iter_modules(pipeline.algorithms.__path__))
    assert {"pipeline.algorithms.cer", "pipeline.algorithms.disagreement", "pipeline.algorithms.similarity",
            "pipeline.algorithms.reduction"} <= set(modules)
    code = ("import importlib, json, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            f"print(json.dumps(sorted(n for n in sys.modules if n.startswith({STORAGE!r}))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [], f"importing {modules} loaded these"
