"""A checkpoint is data, never code; a changed or incomplete one is refused, never used as is."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from pipeline import model as M
from pipeline.testing import save_tiny

EVIL_CODE = """from pathlib import Path
Path({marker!r}).write_text("the checkpoint's code ran")
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model
class EvilConfig(Wav2Vec2Config):
    pass
class EvilFeatureExtractor(Wav2Vec2FeatureExtractor):
    pass
class EvilModel(Wav2Vec2Model):
    config_class = EvilConfig
"""
AUTO_MAP = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel",
            "AutoFeatureExtractor": "evil.EvilFeatureExtractor"}


def _with_code(folder: Path, preprocessor: dict) -> Path:
    """A tiny checkpoint whose config.json and preprocessor_config.json point (auto_map) at evil.py,
    which writes folder/MARKER when imported."""
    save_tiny(folder, "wav2vec2-group")
    (folder / "evil.py").write_text(EVIL_CODE.format(marker=str(folder / "MARKER")))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": AUTO_MAP}))
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return folder


@pytest.fixture
def user_who_says_yes(monkeypatch):
    """stdin closed, and any prompt answered "y" (what transformers asked users before): the prompts are kept."""
    prompts: list[str] = []

    def answer(prompt=""):
        prompts.append(prompt)
        return "y"

    monkeypatch.setattr("builtins.input", answer)
    monkeypatch.setattr(sys, "stdin", open(os.devnull))
    return prompts


def test_checkpoint_code_never_runs_and_the_standard_class_reads_its_files(tmp_path, user_who_says_yes):
    folder = _with_code(tmp_path / "ckpt", {"auto_map": AUTO_MAP, "do_normalize": True, "sampling_rate": 16_000})
    lm = M.load_model(str(folder), device="cpu")
    assert user_who_says_yes == [] and not (folder / "MARKER").exists()
    assert type(lm.model).__name__ == "Wav2Vec2Model" and type(lm.config).__name__ == "Wav2Vec2Config"
    # the file's own values, read by Wav2Vec2FeatureExtractor (not the group-norm convention, False)
    assert (lm.do_normalize, lm.do_normalize_source) == (True, "preprocessor_config")


def test_a_feature_extractor_that_exists_only_as_checkpoint_code_is_read_by_the_standard_one(
        tmp_path, user_who_says_yes, caplog):
    folder = _with_code(tmp_path / "ckpt", {"feature_extractor_type": "EvilFeatureExtractor", "auto_map": AUTO_MAP,
                                            "do_normalize": True})
    lm = M.load_model(str(folder), device="cpu")
    assert user_who_says_yes == [] and not (folder / "MARKER").exists()
    assert (lm.do_normalize, lm.do_normalize_source) == (True, "preprocessor_config")
    assert "evil.EvilFeatureExtractor" in caplog.text and "not run" in caplog.text


def test_an_unreadable_preprocessor_config_is_a_clear_error_not_the_convention(tmp_path):
    """It used to fall back silently to the convention, which says do_normalize=False here."""
    folder = save_tiny(tmp_path / "m", "wav2vec2-group")
    (folder / "preprocessor_config.json").write_text('{"do_normalize": true,')
    with pytest.raises(ValueError, match=f"{folder}: its preprocessor_config.json cannot be read.*Fix the file"):
        M.load_model(str(folder), device="cpu")


def test_every_transformers_loader_in_the_model_package_refuses_remote_code():
    """Each Auto*.from_pretrained / from_config names trust_remote_code=False (the default may prompt),
    in every module of pipeline/model/ and in the labels stage's CTC loader."""
    import ast

    from pipeline.stages import labels

    calls = []
    for path in [*sorted(Path(M.__file__).parent.glob("*.py")), Path(labels.__file__)]:
        calls += [(path.name, n) for n in ast.walk(ast.parse(path.read_text()))
                  if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                  and n.func.attr in ("from_pretrained", "from_config")
                  and isinstance(n.func.value, ast.Name) and n.func.value.id.startswith("Auto")]
    assert len(calls) >= 6
    for name, call in calls:
        flags = {k.arg: k.value for k in call.keywords}
        assert isinstance(flags.get("trust_remote_code"), ast.Constant) and flags["trust_remote_code"].value is False, \
            f"{name} line {call.lineno}: {ast.unparse(call)}"


# ---------------------------------------------------------------- incomplete checkpoints


def _without(folder: Path, drop) -> Path:
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    save_file({k: v for k, v in load_file(path).items() if not drop(k)}, path, metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("head,prefix", [("AutoModel", ""), ("Wav2Vec2ForCTC", "wav2vec2.")])
@pytest.mark.parametrize("part", ["encoder.layers.", "feature_extractor.conv_layers.0.", "feature_projection."])
def test_missing_encoder_weights_are_refused(tmp_path, head, prefix, part):
    folder = _without(save_tiny(tmp_path / "m", "wav2vec2-group", head), lambda k: k.startswith(prefix + part))
    with pytest.raises(ValueError, match=rf"{folder}.* lacks \d+ weight tensors of the encoder \({part}") as err:
        M.load_model(str(folder), device="cpu")
    assert "random" in str(err.value) and "complete" in str(err.value)


def test_weights_a_base_checkpoint_may_lack_are_allowed(tmp_path):
    """masked_spec_embed (SpecAugment's mask vector: training only) is absent from many base checkpoints."""
    folder = _without(save_tiny(tmp_path / "m", "wav2vec2-group"), lambda k: k == "masked_spec_embed")
    lm = M.load_model(str(folder), device="cpu")
    assert lm.num_layers == 2


def test_default_model_is_complete(tmp_path):
    from transformers import AutoModel

    folder = M.ensure_default_model(M.default_model_path(tmp_path))
    _, info = AutoModel.from_pretrained(folder, trust_remote_code=False, output_loading_info=True)
    assert not info["missing_keys"]
    assert M.load_model("default", device="cpu", cache_dir=tmp_path).num_layers == 4


# ---------------------------------------------------------------- weight fingerprint


def test_fingerprint_sees_weights_rewritten_in_place_with_their_mtime_restored(tmp_path, monkeypatch):
    """Same size, same mtime (os.utime), same inode: only the ctime tells, and it cannot be set back."""
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    folder = save_tiny(tmp_path / "m", "wav2vec2-group")
    weights = folder / "model.safetensors"
    first = M.folder_fingerprint(folder)
    assert M.folder_fingerprint(folder) == first and list((tmp_path / "cache" / "fingerprints").glob("*.json"))
    before = weights.stat()
    time.sleep(0.05)  # past the kernel's coarse timestamp tick (<= 10 ms), so the new ctime is a new value
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte of one tensor
    with open(weights, "r+b") as f:  # in place: same inode
        f.write(data)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = weights.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    second = M.folder_fingerprint(folder)
    assert second != first and second == M.folder_fingerprint(folder, cache=False)
    assert M.load_model(str(folder), device="cpu").revision == second

