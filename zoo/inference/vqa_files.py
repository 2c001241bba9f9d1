"""Answering a question file over an image folder with a Mustafar predictor: JSON in, JSON out, resumable."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from zoo.utils.files import atomic_write_json, safe_join


def read_questions(path: str | os.PathLike) -> list[dict[str, str]]:
    """A JSON list of {"image": path under the image root, "question": text}; errors name the record."""
    try:
        records = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the question file ({error})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: a question file is a JSON list of {{'image', 'question'}} records")
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            raise ValueError(f"{path}: record {index} needs an 'image' file name")
        if not isinstance(record.get("question"), str) or not record["question"].strip():
            raise ValueError(f"{path}: record {index}: empty question")
    return records


def answer_question_file(
    predictor: Any,
    questions: str | os.PathLike,
    image_root: str | os.PathLike,
    out: str | os.PathLike,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
) -> list[dict[str, str]]:
    """Answer every record, writing `out` (the records with "answer") atomically after each batch.

    Resumable: records already answered in `out` (same image and question) are kept and not asked again, so a
    killed run restarted with the same command ends with the same file.
    """
    records = read_questions(questions)
    done: dict[tuple[str, str], str] = {}
    if Path(out).is_file():
        done = {(r["image"], r["question"]): r["answer"] for r in json.loads(Path(out).read_text())}
    results = [
        dict(r, answer=done[(r["image"], r["question"])]) if (r["image"], r["question"]) in done else None
        for r in records
    ]
    todo = [i for i, result in enumerate(results) if result is None]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        paths = [safe_join(image_root, records[i]["image"]) for i in chunk]
        answers = predictor(
            paths,
            [records[i]["question"] for i in chunk],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        ).answers
        for i, answer in zip(chunk, answers, strict=True):
            results[i] = dict(records[i], answer=answer)
        atomic_write_json(out, [r for r in results if r is not None])
    atomic_write_json(out, results)
    return results
