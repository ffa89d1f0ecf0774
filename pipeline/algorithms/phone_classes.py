"""Phone label → broad class (vowel, diphthong, stop, affricate, fricative, nasal, approximant,
closure, silence), for TIMIT's 61 phones, ARPAbet (MFA / CMUdict, stress digits stripped) and
espeak-ng mnemonics (the embedded corpus; `pipeline/corpus/embedded/phone_classes.json` wins when present).

One label can mean different things in different inventories (`T` is θ in espeak-ng and t in
ARPAbet; `V` is ʌ in espeak-ng and v in ARPAbet), so `classify` first picks the inventory that
covers most of a run's labels, then falls back label by label to the others. Unknown → 'other'.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from pipeline.algorithms.ctc import BLANK_LABEL, WORD_DELIMITER

EMBEDDED_JSON = Path(__file__).resolve().parents[1] / "corpus" / "embedded" / "phone_classes.json"
CLASSES = ("vowel", "diphthong", "approximant", "nasal", "fricative", "affricate", "stop", "closure", "silence", "other")


def _table(spec: dict[str, str]) -> dict[str, str]:
    return {label: cls for cls, labels in spec.items() for label in labels.split()}


# TIMIT (61 labels, lower case). Closures are their own class; h#, pau, epi are silence.
TIMIT = _table({
    "vowel": "iy ih eh ae aa ah ao uh uw ux er ax ix axr ax-h",
    "diphthong": "ey aw ay oy ow",
    "approximant": "l r w y el",
    "nasal": "m n ng em en eng nx",
    "fricative": "s sh z zh f th v dh hh hv",
    "affricate": "jh ch",
    "stop": "b d g p t k dx q",
    "closure": "bcl dcl gcl pcl tcl kcl",
    "silence": "h# pau epi",
})

# ARPAbet as MFA / CMUdict write it (upper case; stress digits are stripped before lookup).
ARPABET = _table({
    "vowel": "AA AE AH AO EH ER IH IY UH UW AX AXR IX",
    "diphthong": "AW AY EY OW OY",
    "approximant": "L R W Y EL",
    "nasal": "M N NG EM EN",
    "fricative": "DH F HH S SH TH V Z ZH",
    "affricate": "CH JH",
    "stop": "B D G K P T DX",
    "silence": "SIL SP",
})

# Silence, the one place for its labels (three sets for three uses):
SILENCE = "sil"  # the pause label the corpus readers write (an empty TextGrid interval, the embedded corpus)
# labels whose class is silence in any inventory, compared lower-cased; MFA's spn (spoken noise) stays "other"
SILENCE_WORDS = {"", SILENCE, "sp", "<sil>", "<eps>", "_", WORD_DELIMITER, BLANK_LABEL}
# labels `analyze --no-silence` leaves out (exact match): pauses of the corpora, TIMIT's h#, pau, epi, MFA's sp
# and spn, the CTC blank and word delimiter
SILENCE_LABELS = (SILENCE, "h#", "pau", "epi", "sp", "spn", BLANK_LABEL, WORD_DELIMITER)

# espeak-ng 1.51 mnemonics (stress marks stripped), used when the embedded JSON is absent.
ESPEAK = _table({
    "vowel": "0 3 3: @ @2 A: A@ E I I# I2 IR O2 O: O@ U V VR a a# aa i i: o@ u:",
    "diphthong": "OI U@ aI aI2 aI@ aU e@ eI i@ i@3 oU",
    "approximant": "; @L j l r r- w w#",
    "nasal": "N m n",
    "fricative": "D S T Z f h s v z x",
    "affricate": "dZ tS",
    "stop": "b d g k p t t# t2 t[ ?",
    "silence": "sil _ _:",
})

STRESS = re.compile(r"(?<=[A-Za-z])[012]$")
ARPABET_STRESSED = re.compile(r"^[A-Z]{2}[012]$")  # AH0, IY1: vowels with stress, never espeak


@lru_cache(maxsize=1)
def embedded_classes() -> dict[str, str]:
    """The embedded corpus's own mapping (its JSON), or {} when it is not there."""
    if not EMBEDDED_JSON.exists():
        return {}
    return dict(json.loads(EMBEDDED_JSON.read_text())["classes"])


def inventories() -> dict[str, dict[str, str]]:
    return {"espeak": {**ESPEAK, **embedded_classes()}, "timit": TIMIT, "arpabet": ARPABET}


def _lookup(label: str, table: dict[str, str], name: str) -> str | None:
    if name == "arpabet":
        return table.get(STRESS.sub("", label).upper())
    if name == "espeak":
        return table.get(label) or table.get(label.rstrip("'\",%="))
    return table.get(label)


def detect_inventory(labels: Iterable[str]) -> str:
    """The inventory ('espeak', 'timit', 'arpabet') that knows most of `labels` (ties: that order)."""
    labels = [lab for lab in set(labels) if lab is not None and lab.lower() not in SILENCE_WORDS]
    scores = {name: sum(_lookup(lab, table, name) is not None for lab in labels) for name, table in inventories().items()}
    # Upper-case labels with stress digits are ARPAbet even where espeak also knows the letters.
    if any(ARPABET_STRESSED.match(lab) for lab in labels):
        return "arpabet"
    return max(scores, key=lambda name: scores[name])  # dicts keep order: first maximum wins ties


def classify(labels: Iterable[str], inventory: str = "auto") -> dict[str, str]:
    """Broad class of each label: the chosen (or detected) inventory first, then the others."""
    labels = sorted({lab for lab in labels if lab is not None})
    tables = inventories()
    first = detect_inventory(labels) if inventory == "auto" else inventory
    if first not in tables:
        raise ValueError(f"unknown phone inventory {inventory!r}: use 'auto', 'espeak', 'timit' or 'arpabet'")
    order = [first] + [name for name in tables if name != first]
    out = {}
    for lab in labels:
        found = None if lab.lower() not in SILENCE_WORDS else "silence"
        for name in order:
            found = found or _lookup(lab, tables[name], name)
        out[lab] = found or "other"
    return out
