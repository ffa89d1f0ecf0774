"""pipeline.testing: importable by users' own tests without pytest, and light until a model is built."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.testing import TINY_FAMILIES, tiny_config


def test_importing_the_builders_loads_no_pytest_torch_or_transformers():
    code = ("import json, sys\nimport pipeline.testing\n"
            "print(json.dumps(sorted(m for m in ('pytest', 'torch', 'transformers') if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_an_unknown_tiny_family_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown tiny model family 'wav2vec3': expected one of wav2vec2-group, "):
        tiny_config("wav2vec3")
    assert tiny_config(TINY_FAMILIES[0]).num_hidden_layers == 2
