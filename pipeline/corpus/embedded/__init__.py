"""The embedded default corpus: 240 espeak-ng utterances (8.4 min, 8 voices) with exact phone and
word alignments, shipped as Hugging Face Hub-style Parquet (see data/README.md).

Regenerate with `python -m pipeline.corpus.embedded.build` (needs Debian's libespeak-ng1 + espeak-ng-data).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DATA_DIR = PACKAGE_DIR / "data"
PHONE_CLASSES_PATH = PACKAGE_DIR / "phone_classes.json"
SPLITS = ("train", "test")


def data_files() -> dict[str, str]:
    """split → Parquet path, as `datasets.load_dataset("parquet", data_files=...)` takes it."""
    return {split: str(DATA_DIR / f"{split}-00000-of-00001.parquet") for split in SPLITS}
