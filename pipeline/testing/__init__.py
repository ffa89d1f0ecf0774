"""Builders for tests and for users' own tests: tiny corpora in every supported layout, tiny random models
saved as checkpoints, model-free warehouses, and slow reference formulas (lhotse's `testing/dummies.py`).

Plain functions, no pytest: call them from fixtures. Everything is generated locally (no downloads); torch
and transformers load only when a model builder is called.

    from pipeline.testing import make_timit, save_tiny
    corpus = make_timit(tmp_path / "timit")          # 4 TIMIT utterances, 2 speakers
    model = save_tiny(tmp_path / "model", "wav2vec2-group")
"""

from pipeline.testing.corpora import (BAD_TIMIT_CASES, RATE, audio_bytes, make_bad_timit, make_hf_parquet,
                                      make_textgrid_corpus, make_timit, phone_lines, tone, write_timit_utt)
from pipeline.testing.models import CTC_VOCAB, TINY_FAMILIES, save_tiny, save_tiny_ctc, tiny_config
from pipeline.testing.oracles import gram_cka
from pipeline.testing.warehouses import SYNTHETIC_PHONES, SYNTHETIC_SPEAKERS, make_frames_warehouse, segments_of

__all__ = [
    "RATE", "tone", "audio_bytes", "phone_lines", "write_timit_utt", "make_timit", "BAD_TIMIT_CASES", "make_bad_timit",
    "make_textgrid_corpus", "make_hf_parquet",
    "TINY_FAMILIES", "tiny_config", "save_tiny", "CTC_VOCAB", "save_tiny_ctc",
    "SYNTHETIC_PHONES", "SYNTHETIC_SPEAKERS", "make_frames_warehouse", "segments_of",
    "gram_cka",
]
