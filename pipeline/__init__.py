"""wav2vec2 layer analysis: a streaming pipeline from speech corpora to a columnar warehouse."""

import os

# Process-wide, before FAISS, scikit-learn or torch load an OpenMP runtime (libgomp reads it once):
# spinning idle threads slowed small k-means fits 30x on 2 cores; passive waiting cost nothing
# measurable for the large ones. A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

NOTEBOOK_API = ("open_warehouse", "vectors")  # `from pipeline import open_warehouse, vectors` (pipeline/notebook.py)


def __getattr__(name: str):
    """The notebook API, imported on first use so that `import pipeline` stays free of DuckDB and Arrow."""
    if name in NOTEBOOK_API:
        from pipeline import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
