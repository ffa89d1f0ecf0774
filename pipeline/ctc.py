"""CTC labels: greedy frame labels and their collapse into a token sequence.

A CTC model emits one distribution over tokens per frame (~50 per second); token 0 is usually the
blank. Greedy decoding takes the argmax per frame, then collapses runs of the same token and
drops blanks: [a a _ a b _ b] → "a a b b".
"""

from __future__ import annotations

import numpy as np


def collapse(frame_ids, blank: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Greedy CTC collapse of per-frame token ids.

    Returns (tokens, first_frame): the decoded token ids and, for each, the frame where its run
    starts. Repeats merge unless a blank separates them; blanks are dropped.
    """
    ids = np.asarray(frame_ids, dtype=np.int64).reshape(-1)
    if ids.size == 0:
        return ids, ids.copy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    keep = starts[ids[starts] != blank]
    return ids[keep], keep
