"""A user's mistake prints one line `error: …` that says what to do, exits non-zero; -v adds the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_missing_corpus_folder(tmp_path: Path, capsys) -> None:
    code = main(["ingest", "--format", "timit", "--corpus", str(tmp_path / "nope"), "--run", "x",
                 "--warehouse", str(tmp_path / "wh")])
    assert code != 0
    line = _one_error_line(capsys)
    assert str(tmp_path / "nope") in line


def test_unknown_run(tmp_path: Path, capsys) -> None:
    assert main(["analyze", "--run", "nope", "--warehouse", str(tmp_path / "wh")]) != 0
    line = _one_error_line(capsys)
    assert "'nope'" in line and "extract" in line


def test_bad_query_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["sql", "selec 1 from frames", "--warehouse", str(tmp_path / "wh")]) != 0
    line = _one_error_line(capsys)
    assert "syntax error" in line.lower()


def test_unknown_query_name(tmp_path: Path, capsys) -> None:
    assert main(["sql", "no_such_query_name", "--warehouse", str(tmp_path / "wh")]) != 0
    _one_error_line(capsys)


def test_verbose_shows_traceback(tmp_path: Path, capsys) -> None:
    assert main(["analyze", "--run", "nope", "--warehouse", str(tmp_path / "wh"), "-v"]) != 0
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: ")


def test_model_unreachable_offline(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-m", "pipeline", "extract", "--model", "someone/not-cached-model",
                           "--run", "r", "--warehouse", str(tmp_path / "wh"), "--limit", "1", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "someone/not-cached-model" in lines[0]
