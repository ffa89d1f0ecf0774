"""The model: load a wav2vec2-family checkpoint and extract its layers, batched and chunked, exactly.

    registry.py     named models (`default`, `default-ctc`) → local folders; the default model's build
    loading.py      load_model → LoadedModel (base encoder, facts, checks), parse_layers
    fingerprint.py  what identifies a checkpoint: revision, folder and config fingerprints
    batching.py     whole-utterance normalisation, windows of long recordings, length buckets
    forward.py      extract / extract_windows: exact batched forward pass, layers -1..N
    demo.py         trains `default-ctc` (python -m pipeline demo-models)

Everything public is importable from here: `from pipeline.model import load_model, extract`. Each
name's module is imported when the name is first used, so `pipeline.model.batching` (numpy only;
the batch-size default the extract stage's config reads) costs no torch import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "batching": ["DEFAULT_MAX_BATCH_SAMPLES", "DEFAULT_MAX_BATCH_SIZE", "NORM_EPS", "STATS_PIECE_SAMPLES",
                 "ChunkWindow", "NormalisedWave", "chunk_windows", "length_buckets", "max_batch_size_for",
                 "normalize_waveform"],
    "fingerprint": ["WEIGHT_FILE_RE", "config_fingerprint", "folder_fingerprint", "revision", "user_cache_dir"],
    "forward": ["extract", "extract_windows", "n_windows"],
    "loading": ["DTYPES", "ESSENTIAL_WEIGHT_PREFIXES", "LAYER_CNN", "SUPPORTED_MODEL_TYPES", "LoadedModel",
                "check_model_type", "check_sample_rate", "feature_extractor_facts", "load_config", "load_model",
                "parse_layers", "refuse_missing_weights", "resolve_device"],
    "registry": ["DEFAULT_MODEL_ID", "DEFAULT_MODEL_SOURCE", "DEMO_CTC_MODEL_ID", "default_model_path",
                 "ensure_default_model", "register_model", "resolve_model", "seeded"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # looked up once; a test's monkeypatch.setattr replaces it here as before
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
