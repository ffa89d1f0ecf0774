"""wav2vec2 layer analysis: a streaming pipeline from speech corpora to a columnar warehouse."""

import os

# FAISS, scikit-learn and torch share OpenMP runtimes; spinning idle threads slowed small fits 30×
# on 2 cores. Passive waiting costs nothing measurable for the large ones.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
