"""Which expert a question goes to: a multinomial naive Bayes over character 1-2 grams, trained on the
task labels of our corpus' instructions (the user turns), with add-one smoothing."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Iterable

from pedray.vocab import TASKS


def features(text: str) -> list[str]:
    chars = [c for c in text if not c.isspace()]
    return chars + [a + b for a, b in zip(chars, chars[1:])]


class TaskClassifier:
    def __init__(self, priors: dict[str, float], weights: dict[str, dict[str, float]], unseen: dict[str, float]):
        self.priors, self.weights, self.unseen = priors, weights, unseen

    @classmethod
    def fit(cls, examples: Iterable[tuple[str, str]]) -> "TaskClassifier":
        counts = {task: Counter() for task in TASKS}
        docs = Counter()
        for text, task in examples:
            counts[task].update(features(text))
            docs[task] += 1
        total = sum(docs.values())
        if not total:
            raise ValueError("no labelled examples to train the task classifier on")
        vocab = set().union(*counts.values())
        priors, weights, unseen = {}, {}, {}
        for task in TASKS:
            if not docs[task]:
                continue
            denominator = sum(counts[task].values()) + len(vocab)
            priors[task] = math.log(docs[task] / total)
            weights[task] = {f: math.log((n + 1) / denominator) for f, n in counts[task].items()}
            unseen[task] = math.log(1 / denominator)
        return cls(priors, weights, unseen)

    def scores(self, text: str) -> dict[str, float]:
        feats = features(text)
        return {task: self.priors[task] + sum(self.weights[task].get(f, self.unseen[task]) for f in feats)
                for task in self.priors}

    def predict(self, text: str) -> str:
        scores = self.scores(text)
        return max(scores, key=scores.get)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"priors": self.priors, "weights": self.weights, "unseen": self.unseen},
                                         ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "TaskClassifier":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(data["priors"], data["weights"], data["unseen"])


def corpus_examples(corpus_dirs: list[str | Path], split: str = "train") -> list[tuple[str, str]]:
    """(first user turn, task) of every instruction in the corpus split."""
    from pedray.data.pipeline import corpus_files  # Ray Data with it: the driver reads the corpus, not the router

    examples = []
    for file in corpus_files(list(corpus_dirs), "sft", split):
        with open(file, encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                user = next(m["content"] for m in record["messages"] if m["role"] == "user")
                examples.append((user, record["task"]))
    return examples
