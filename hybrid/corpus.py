"""The built-in corpus: text from a small Markov source whose entropy rate is known exactly.

The source is a first-order Markov chain over word categories (determiner, adjective,
noun, verb, adverb, preposition, end of sentence); each visit to a category emits one of its
words with fixed probabilities. Every word is spelled with its separator (``"cat "``,
``".\\n"``), so the text and the word sequence determine each other, and the entropy rate
per character is exact:

    H_char = H_word / E[len]          (nats per character)
    H_word = sum_c pi(c) * [ H(T[c, :]) + sum_c' T[c, c'] * H(E[c']) ]
    E[len] = sum_c pi(c) * sum_w E[c](w) * len(w)

where T is the category transition matrix, pi its stationary distribution and E[c] the word
distribution of category c. No model, however large its context, can reach a lower
validation loss in expectation; ``ENTROPY_RATE`` is that floor.
"""

from __future__ import annotations

import numpy as np

# category -> (words, emission probabilities)
WORDS = {
    "DET": (("the", "a", "every", "no"), (0.5, 0.3, 0.12, 0.08)),
    "ADJ": (("small", "red", "quick", "old", "happy", "dark"), (0.25, 0.2, 0.2, 0.15, 0.1, 0.1)),
    "NOUN": (
        ("cat", "dog", "bird", "child", "robot", "river", "stone", "tree"),
        (0.2, 0.18, 0.14, 0.12, 0.1, 0.1, 0.08, 0.08),
    ),
    "VERB": (("sees", "likes", "finds", "chases", "hears", "keeps"), (0.25, 0.2, 0.2, 0.15, 0.1, 0.1)),
    "ADV": (("slowly", "often", "quietly"), (0.5, 0.3, 0.2)),
    "PREP": (("near", "under", "with"), (0.4, 0.35, 0.25)),
    "END": ((".",), (1.0,)),
}
CATEGORIES = tuple(WORDS)
# TRANSITIONS[c][c'] = P(next category c' | category c); rows sum to 1.
TRANSITIONS = {
    "DET": {"ADJ": 0.4, "NOUN": 0.6},
    "ADJ": {"ADJ": 0.2, "NOUN": 0.8},
    "NOUN": {"VERB": 0.5, "PREP": 0.2, "END": 0.3},
    "VERB": {"DET": 0.7, "ADV": 0.3},
    "ADV": {"END": 0.6, "PREP": 0.4},
    "PREP": {"DET": 1.0},
    "END": {"DET": 1.0},
}


def spell(word: str) -> str:
    """A word with its separator: sentences end in a newline, other words in a space."""
    return ".\n" if word == "." else word + " "


def _transition_matrix() -> np.ndarray:
    index = {c: i for i, c in enumerate(CATEGORIES)}
    T = np.zeros((len(CATEGORIES), len(CATEGORIES)))
    for c, row in TRANSITIONS.items():
        for c2, p in row.items():
            T[index[c], index[c2]] = p
    return T


def _stationary(T: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eig(T.T)
    pi = np.real(vectors[:, np.argmin(np.abs(values - 1))])
    return pi / pi.sum()


def _entropy(p) -> float:
    p = np.asarray(p, dtype=float)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def entropy_rate() -> float:
    """Entropy rate of the character process, in nats per character (see module docstring)."""
    T = _transition_matrix()
    pi = _stationary(T)
    word_entropy = np.array([_entropy(WORDS[c][1]) for c in CATEGORIES])
    mean_length = np.array([sum(p * len(spell(w)) for w, p in zip(*WORDS[c], strict=True)) for c in CATEGORIES])
    h_word = float(pi @ (np.array([_entropy(row) for row in T]) + T @ word_entropy))
    return h_word / float(pi @ mean_length)


ENTROPY_RATE = entropy_rate()


def generate(n_chars: int, seed: int = 2024) -> str:
    """The first ``n_chars`` characters of the source, started at a sentence boundary.

    Deterministic for a given seed on every platform and NumPy version: it draws only
    ``Generator.random()`` doubles from PCG64 and inverts cumulative probabilities itself.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    T = _transition_matrix()
    next_category = np.cumsum(T, axis=1)
    emit = {c: np.cumsum(p) for c, (_, p) in WORDS.items()}
    pieces, length, c = [], 0, CATEGORIES.index("END")
    while length < n_chars:
        c = min(int(np.searchsorted(next_category[c], rng.random(), side="right")), len(CATEGORIES) - 1)
        words, _ = WORDS[CATEGORIES[c]]
        k = min(int(np.searchsorted(emit[CATEGORIES[c]], rng.random(), side="right")), len(words) - 1)
        pieces.append(spell(words[k]))
        length += len(pieces[-1])
    return "".join(pieces)[:n_chars]
