"""Linear probes: how well a linear classifier reads a label (the phone) off one layer's vectors.

The second per-layer measure beside the clustering metrics, as in the probing literature
(e.g. Pasad et al. 2021 on wav2vec2 layers): a multinomial logistic regression on standardised
vectors, trained and tested on disjoint speakers, so that it measures phone information that
generalises across voices rather than memorised speakers.

Speakers are split by a seeded hash: about a quarter (at least one) are held out. Test frames
whose label never occurs in training count as errors. Scores: accuracy, balanced accuracy (mean
per-label recall; chance is 1 / labels) and the number of test frames.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field

import numpy as np

TEST_SHARE = 0.25
MAX_ITER = 300


@dataclass(frozen=True)
class ProbeScore:
    accuracy: float
    balanced_accuracy: float
    n_train: int
    n_test: int
    n_labels: int
    chance: float  # balanced accuracy of always answering one label: 1 / labels in the test set
    # the test rows' labels and predictions, in test-row order (for bootstrap.bootstrap_probe's interval)
    y_test: np.ndarray | None = field(default=None, compare=False, repr=False)
    predicted: np.ndarray | None = field(default=None, compare=False, repr=False)


def split_speakers(speakers, seed: int = 0, test_share: float = TEST_SHARE) -> np.ndarray:
    """Boolean mask of test rows: whole speakers, chosen by a seeded hash of their names.

    Raises ValueError with fewer than two speakers (no disjoint split exists).
    """
    speakers = np.asarray(speakers, dtype=object)
    names = sorted({str(s) for s in speakers})
    if len(names) < 2:
        raise ValueError(f"a speaker-disjoint probe needs at least two speakers, got {names}")
    order = sorted(names, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    n_test = min(len(names) - 1, max(1, round(test_share * len(names))))
    held_out = set(order[:n_test])
    return np.array([str(s) in held_out for s in speakers])


def fit_score(x_train: np.ndarray, y_train, x_test: np.ndarray, y_test, seed: int = 0) -> ProbeScore:
    """Train a logistic-regression probe on (x_train, y_train) and score it on the test rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    y_train, y_test = np.asarray(y_train, dtype=object).astype(str), np.asarray(y_test, dtype=object).astype(str)
    if len(set(y_train)) < 2:
        raise ValueError(f"the probe's training rows hold {len(set(y_train))} label(s); it needs two or more")
    if len(y_test) == 0:
        raise ValueError("the probe has no test rows")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER, random_state=seed))
    # one BLAS thread: on a loaded 2-core machine a threaded BLAS made the lbfgs fit 8x slower
    # (8,000 x 256, 45 labels: 14 s against 1.8 s); the matrices are small enough for one core
    with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
        warnings.simplefilter("ignore")  # lbfgs may stop at max_iter: the score says how good it is
        model.fit(np.asarray(x_train, np.float32), y_train)
        predicted = model.predict(np.asarray(x_test, np.float32))
        balanced = balanced_accuracy_score(y_test, predicted)
    return ProbeScore(accuracy=float(np.mean(predicted == y_test)), balanced_accuracy=float(balanced),
                      n_train=len(y_train), n_test=len(y_test), n_labels=len(set(y_train) | set(y_test)),
                      chance=1.0 / len(set(y_test)), y_test=y_test, predicted=np.asarray(predicted, dtype=object))


def speaker_disjoint_probe(x: np.ndarray, labels, speakers, seed: int = 0) -> ProbeScore:
    """Probe trained on about three quarters of the speakers, tested on the others."""
    test = split_speakers(speakers, seed)
    labels = np.asarray(labels, dtype=object)
    return fit_score(x[~test], labels[~test], x[test], labels[test], seed)
