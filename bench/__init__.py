"""Benchmarks (`make bench`): separate from the tests; every ratio is measured within one run.

`python -m bench.run --out bench/results.json` runs them all; see bench/README.md.
"""
