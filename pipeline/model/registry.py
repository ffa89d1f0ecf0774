"""Named models: a name such as `--model default` stands for a local folder the pipeline builds.

    default       the embedded random-weight model, built here from default_model/ (no network)
    default-ctc   the same model fine-tuned with CTC on the embedded corpus (pipeline/model/demo.py),
                  once `python -m pipeline demo-models` has trained it

`resolve_model(name_or_path, cache_dir)` is the one place a name becomes a folder; every loader
(`load_model`, `labels.load_ctc_model`) calls it, and anything else passes through unchanged (a
hub id or a folder). The demo module imports this package, so its resolver imports it on call.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import torch

from pipeline.model.fingerprint import user_cache_dir

DEFAULT_MODEL_ID = "default"
DEMO_CTC_MODEL_ID = "default-ctc"  # the default model fine-tuned with CTC on the embedded corpus
DEFAULT_MODEL_SOURCE = Path(__file__).resolve().parent / "default_model"

Resolver = Callable[[str | os.PathLike | None], Path]  # cache_dir (None: the user cache) → model folder
_NAMED: dict[str, Resolver] = {}


def register_model(name: str, resolver: Resolver) -> None:
    """Make `--model NAME` load the folder `resolver(cache_dir)` returns (built or found there)."""
    if name in _NAMED:
        raise ValueError(f"model name {name!r} is already registered")
    _NAMED[name] = resolver


def resolve_model(id_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str | os.PathLike:
    """The folder of a named model (built or found under `cache_dir`), else `id_or_path` unchanged."""
    resolver = _NAMED.get(str(id_or_path))
    return id_or_path if resolver is None else resolver(cache_dir)


# ---------------------------------------------------------------- the embedded default model


def default_model_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of the embedded default model, named by the hash of its config files."""
    digest = hashlib.sha256()
    for name in ("config.json", "preprocessor_config.json"):
        digest.update((DEFAULT_MODEL_SOURCE / name).read_bytes())
    folder = Path(cache_dir) if cache_dir is not None else user_cache_dir()
    return folder / f"default-wav2vec2-{digest.hexdigest()[:12]}"


def ensure_default_model(folder: str | os.PathLike) -> Path:
    """Build the default model into `folder` if absent: random weights from torch.manual_seed(0).

    Built in a temporary sibling folder and renamed into place, so a reader never sees half a
    model; two builds give identical weights (tests/test_model.py).
    """
    from transformers import AutoConfig, AutoModel

    folder = Path(folder)
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        config = AutoConfig.from_pretrained(DEFAULT_MODEL_SOURCE, trust_remote_code=False)
        with seeded(0):
            model = AutoModel.from_config(config, trust_remote_code=False)
        model.save_pretrained(tmp, safe_serialization=True)
        shutil.copy(DEFAULT_MODEL_SOURCE / "preprocessor_config.json", tmp / "preprocessor_config.json")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process won the race; its build is identical
            if not (folder / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's CPU generator seeded inside the block and restored after it (the caller's draws are untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _default(cache_dir: str | os.PathLike | None) -> Path:
    return ensure_default_model(default_model_path(cache_dir))


def _demo_ctc(cache_dir: str | os.PathLike | None) -> Path:
    from pipeline.model.demo import resolve_demo_model  # demo imports this package: imported when asked for

    return resolve_demo_model(cache_dir)


register_model(DEFAULT_MODEL_ID, _default)
register_model(DEMO_CTC_MODEL_ID, _demo_ctc)
