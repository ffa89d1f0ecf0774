"""The pipeline's stages, each `python -m pipeline NAME`: read the warehouse and the corpus, run the
algorithms, write and commit tables. ingest → extract → labels → analyze / reduce / compare / transcripts
→ report; metadata attaches attributes; check verifies."""
