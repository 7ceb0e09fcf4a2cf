"""The teacher stand-in's knowledge: which intent a ticket carries, read from the task's cue words.

Robust to the generator's noise: case, punctuation, inserted fillers (dropped before matching) and one
swapped letter pair (a cue word of five letters or more also matches a close spelling with the same
first four letters -- the generator's typos never touch those, and it keeps "changed" from "charged").
"""
from __future__ import annotations

import difflib
import re
from collections import Counter

from gateway.demo.task import CUES, FILLERS, LABELS

_WORD = re.compile(r"[a-z0-9][a-z0-9'-]*")


class CueClassifier:
    """Scores each label by its cue hits in the ticket; the best-scoring label wins."""

    def __init__(self, cues: dict[str, tuple[str, ...]] = CUES, labels: tuple[str, ...] = LABELS) -> None:
        self.labels = labels
        self._phrases = {label: [c for c in words if " " in c] for label, words in cues.items()}
        self._words: dict[str, str] = {}
        for label, words in cues.items():
            for cue in words:
                if " " not in cue:
                    self._words[cue] = label
        self._vocab = list(self._words)
        self._fillers = frozenset(FILLERS)

    def scores(self, text: str) -> Counter[str]:
        lowered = " ".join(w for w in _WORD.findall(text.lower()) if w not in self._fillers)
        hits: Counter[str] = Counter()
        for label, phrases in self._phrases.items():
            for phrase in phrases:
                hits[label] += len(re.findall(rf"\b{re.escape(phrase)}\b", lowered))
        for word in lowered.split():
            label = self._words.get(word)
            if label is None and len(word) >= 5:
                same_start = [cue for cue in self._vocab if cue[:4] == word[:4]]
                close = difflib.get_close_matches(word, same_start, n=1, cutoff=0.8)
                label = self._words[close[0]] if close else None
            if label is not None:
                hits[label] += 1
        return hits

    def classify(self, text: str) -> str:
        """The intent label; ties go to the label listed first, no hit at all to "technical"."""
        hits = self.scores(text)
        if not hits or max(hits.values()) == 0:
            return "technical"
        best = max(hits.values())
        return next(label for label in self.labels if hits[label] == best)
