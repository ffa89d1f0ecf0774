"""wav2vec2 layer analysis: a streaming pipeline from speech corpora to a columnar warehouse."""

__version__ = "0.1.0"
