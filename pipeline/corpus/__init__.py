"""Corpus readers: a corpus (Hub id, local Parquet, TIMIT or TextGrid folders, the embedded default) →
utterance items with decoded audio and cleaned alignment tiers."""
