"""Pure algorithms (numpy, FAISS, scikit-learn): no warehouse, no files; tested without storage."""
