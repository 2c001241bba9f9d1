"""VQA metrics on the evaluator protocol: exact match, MMVP pair accuracy, multiple-choice accuracy."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence

from zoo.evaluation.base import RecordEvaluator

_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = re.compile(r"(?<!\d)[.,](?!\d)|[;/\[\]\"{}()=+\\_\-><@`?!*:'#$%^&|~]")


def normalize_answer(text: str) -> str:
    """The VQA answer normalisation: lower case, punctuation dropped, number words as digits, no articles."""
    text = _PUNCTUATION.sub(" ", text.lower().replace("\n", " ").strip())
    words = [_NUMBERS.get(word, word) for word in text.split() if word not in _ARTICLES]
    return " ".join(words)


def _as_list(answers: str | Sequence[str]) -> list[str]:
    return [answers] if isinstance(answers, str) else list(answers)


class VQAAccuracy(RecordEvaluator):
    """Exact-match accuracy after `normalize_answer`: right when the prediction equals any reference answer.

    `question_types` (optional, per sample) adds `accuracy/<type>` for each type.
    """

    def update(
        self,
        sample_ids: Iterable[Hashable],
        predictions: Sequence[str],
        answers: Sequence[str | Sequence[str]],
        question_types: Sequence[str] | None = None,
    ) -> None:
        """Add one batch of predicted answers and their references."""
        types = question_types or [""] * len(predictions)
        for sample_id, prediction, reference, kind in zip(
            sample_ids, predictions, answers, types, strict=True
        ):
            right = normalize_answer(prediction) in {normalize_answer(a) for a in _as_list(reference)}
            self._add(sample_id, (bool(right), kind))

    def _compute(self, records: list[tuple[bool, str]]) -> dict[str, float]:
        if not records:
            return {"accuracy": float("nan"), "count": 0.0}
        metrics = {
            "accuracy": sum(right for right, _ in records) / len(records),
            "count": float(len(records)),
        }
        by_type: dict[str, list[bool]] = defaultdict(list)
        for right, kind in records:
            if kind:
                by_type[kind].append(right)
        metrics.update({f"accuracy/{kind}": sum(v) / len(v) for kind, v in sorted(by_type.items())})
        return metrics


class MMVPPairAccuracy(RecordEvaluator):
    """MMVP: a pair of images (one question each) counts only when both answers are right."""

    def update(
        self,
        sample_ids: Iterable[Hashable],
        predictions: Sequence[str],
        answers: Sequence[str | Sequence[str]],
        pair_ids: Sequence[Hashable],
    ) -> None:
        """Add one batch of predictions with the pair each question belongs to."""
        for sample_id, prediction, reference, pair in zip(
            sample_ids, predictions, answers, pair_ids, strict=True
        ):
            right = _choice_right(prediction, reference)
            self._add(sample_id, (pair, bool(right)))

    def _compute(self, records: list[tuple[Hashable, bool]]) -> dict[str, float]:
        pairs: dict[Hashable, list[bool]] = defaultdict(list)
        for pair, right in records:
            pairs[pair].append(right)
        if not pairs:
            return {"pair_accuracy": float("nan"), "question_accuracy": float("nan"), "pairs": 0.0}
        return {
            "pair_accuracy": sum(all(v) for v in pairs.values()) / len(pairs),
            "question_accuracy": sum(right for _, right in records) / len(records),
            "pairs": float(len(pairs)),
        }


def _choice_right(prediction: str, reference: str | Sequence[str]) -> bool:
    """MMVP answers are "(a) text" options: a prediction is right when it names the letter or the text."""
    guess = normalize_answer(prediction)
    for answer in _as_list(reference):
        match = re.match(r"\s*\(?([a-z])\)\s*(.*)", answer.lower())
        accepted = {normalize_answer(answer)}
        if match:
            accepted |= {match.group(1), normalize_answer(match.group(2))}
        if guess in accepted or (match and guess.split(" ")[:1] == [match.group(1)]):
            return True
    return False


def option_letter(index: int) -> str:
    """ "A", "B", ... for option index 0, 1, ..."""
    return chr(ord("A") + index)


def match_option(prediction: str, options: Sequence[str]) -> int | None:
    """The option a prediction picks: its letter ("B", "(b)", "B.") or its text; None when unclear."""
    text = prediction.strip()
    # "(b) ...", "B", "B." or "B:"; not "a bird" (an article, not option A).
    letter = re.match(r"^\(([A-Za-z])\)|^([A-Za-z])(?:[.:)]|$)", text)
    if letter:
        index = ord((letter.group(1) or letter.group(2)).upper()) - ord("A")
        if 0 <= index < len(options):
            return index
    normalized = normalize_answer(text)
    hits = [i for i, option in enumerate(options) if normalize_answer(option) == normalized]
    return hits[0] if len(hits) == 1 else None


class MultipleChoiceAccuracy(RecordEvaluator):
    """Multiple-choice accuracy: the prediction's option (by letter or text) must be the right one."""

    def update(
        self,
        sample_ids: Iterable[Hashable],
        predictions: Sequence[str],
        options: Sequence[Sequence[str]],
        answer_indices: Sequence[int],
    ) -> None:
        """Add one batch of predictions, the options of each question and the index of the right one."""
        for sample_id, prediction, choices, answer in zip(
            sample_ids, predictions, options, answer_indices, strict=True
        ):
            picked = match_option(prediction, choices)
            self._add(sample_id, (picked == int(answer), picked is None))

    def _compute(self, records: list[tuple[bool, bool]]) -> dict[str, float]:
        if not records:
            return {"accuracy": float("nan"), "unmatched": float("nan"), "count": 0.0}
        return {
            "accuracy": sum(right for right, _ in records) / len(records),
            "unmatched": sum(unclear for _, unclear in records) / len(records),
            "count": float(len(records)),
        }
