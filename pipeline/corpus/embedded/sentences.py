"""Seeded English sentence generator for the embedded corpus.

Templates and vocabulary were written for this project (no published sentence list is used).
The vocabulary is chosen to cover the English phones, rarer ones included: /ʒ/ (treasure, beige,
garage, measured), /ɔɪ/ (boy, coin, noisy), /θ/ and /ð/ (thumb, feather, Thursday), /tʃ/ and /dʒ/
(kitchen, judge), /ŋ/ (ring, song), /ʊ/ (book, wool), the centring diphthongs of British voices
(pear, beer, tour) and syllabic /l/ (bottle, table).
Sentences have 5-7 words: about 1.3-2.5 s of speech at 160-185 words per minute.
"""

from __future__ import annotations

import random
import re

NAMES = (
    "Anna", "Ben", "Carol", "David", "Ellen", "Frank", "George", "Helen", "Jack", "Julia",
    "Kevin", "Laura", "Martin", "Nancy", "Oscar", "Paul", "Rachel", "Sam", "Thomas", "Vera",
    "Walter", "Zoe", "Judy", "Roger", "Sophie", "Hugh",
)
NOUNS = (
    "boy", "coin", "toy", "voice", "oyster", "thumb", "feather", "mouth", "path", "thorn",
    "cheese", "chair", "watch", "ring", "song", "king", "yacht", "wheel", "book", "hook",
    "wool", "fruit", "spoon", "moon", "bird", "shirt", "nurse", "car", "star", "horse",
    "door", "cow", "owl", "pear", "ear", "beer", "tour", "cake", "table", "boat",
    "stone", "kite", "light", "tiger", "cup", "bus", "glove", "cat", "hat", "lamp",
    "bed", "pen", "egg", "fish", "ship", "pig", "dog", "box", "clock", "sheep",
    "tree", "queen", "treasure", "bottle", "judge", "jacket", "violin", "zebra", "pillow",
    "mirror", "sugar", "hammer", "ladder", "wagon", "puzzle", "vase", "rope", "jar",
)
ADJECTIVES = (
    "big", "small", "red", "yellow", "beige", "purple", "heavy", "quiet", "noisy", "shiny",
    "old", "young", "cheap", "huge", "smooth", "rough", "thick", "thin", "warm", "cold",
    "fresh", "wet", "dirty", "tiny", "gentle", "strange", "lovely", "awful", "wooden", "golden",
    "broken", "empty", "clever", "funny", "pretty", "sharp", "soft", "brown", "bright", "dull",
)
VERBS_PAST = (
    "carried", "painted", "dropped", "washed", "fixed", "bought", "found", "moved", "pushed",
    "cleaned", "hid", "sold", "chose", "borrowed", "caught", "shared", "watched", "measured",
    "judged", "weighed", "thanked", "chased", "pulled", "touched", "wrapped", "kept",
)
VERBS_BASE = (
    "carry", "paint", "drop", "wash", "fix", "buy", "find", "move", "push", "clean",
    "hide", "sell", "choose", "borrow", "catch", "share", "watch", "measure", "weigh", "chase",
    "pull", "touch", "wrap", "keep",
)
PREPOSITIONS = ("into", "under", "behind", "near", "beside", "across", "over", "on", "in", "of")
PLACES = (
    "garage", "kitchen", "garden", "church", "station", "village", "harbour", "river",
    "bridge", "market", "office", "museum", "forest", "valley", "shore", "house", "school",
    "cellar", "theatre", "playground",
)
DETERMINERS = ("a", "the", "my", "her", "his", "our", "their", "this", "that", "every")
TIMES = (
    "today", "at noon", "each morning", "last winter", "on Thursday", "yesterday", "at night",
    "this evening", "in June", "after lunch", "before dawn", "all summer",
)
ADVERBS = ("very", "rather", "quite", "really", "usually", "never", "always")
TEMPLATES = (
    "The {adj} {noun} {verb_past} {det} {noun2}.",
    "{name} {verb_past} the {noun} {prep} the {place}.",
    "Did {name} {verb_base} the {noun} {time}?",
    "{name} was {adverb} {adj} {time}.",
    "{Time}, {name} {verb_past} {det} {noun}.",
    "Please {verb_base} the {adj} {noun}.",
    "Why is the {noun} so {adj}?",
    "{name} and {name2} {verb_past} {det} {noun}.",
    "Where did {name} {verb_base} the {noun}?",
    "Their {noun} looked {adj} {time}.",
)
WORD_PATTERN = re.compile(r"[A-Za-z]+")


def _fill(template: str, rng: random.Random) -> str:
    """One sentence from one template; every slot drawn independently."""
    name, name2 = rng.sample(NAMES, 2)
    time = rng.choice(TIMES)
    slots = {
        "name": name, "name2": name2, "noun": rng.choice(NOUNS), "noun2": rng.choice(NOUNS),
        "adj": rng.choice(ADJECTIVES), "verb_past": rng.choice(VERBS_PAST),
        "verb_base": rng.choice(VERBS_BASE), "prep": rng.choice(PREPOSITIONS),
        "place": rng.choice(PLACES), "det": rng.choice(DETERMINERS), "time": time,
        "Time": time[0].upper() + time[1:], "adverb": rng.choice(ADVERBS),
    }
    return _fix_articles(template.format(**slots))


def _fix_articles(sentence: str) -> str:
    """'a' before a vowel letter becomes 'an' (the vocabulary has no 'u'- or 'h'-exceptions)."""
    return re.sub(r"\b([Aa]) (?=[aeioAEIO])", r"\1n ", sentence)


def words_of(sentence: str) -> list[str]:
    """The sentence's words, lower-cased, punctuation dropped: the word tier's vocabulary."""
    return [w.lower() for w in WORD_PATTERN.findall(sentence)]


def generate_sentences(n_sentences: int, seed: int) -> list[str]:
    """`n_sentences` distinct sentences, a pure function of (n_sentences, seed).

    Templates are used in turn (sentence i uses template i mod 10) so that every template
    appears; duplicates are redrawn.
    """
    rng = random.Random(seed)
    sentences: list[str] = []
    seen: set[str] = set()
    while len(sentences) < n_sentences:
        sentence = _fill(TEMPLATES[len(sentences) % len(TEMPLATES)], rng)
        if sentence not in seen:
            seen.add(sentence)
            sentences.append(sentence)
    return sentences
