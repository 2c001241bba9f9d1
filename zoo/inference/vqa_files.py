"""Answering a question file over an image folder with a Mustafar predictor: JSON in, JSON out, resumable."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from zoo.utils.files import (
    OutputLocationError,
    atomic_write_json,
    check_output_location,
    read_json_file,
    safe_join,
)


def read_questions(path: str | os.PathLike) -> list[dict[str, str]]:
    """A JSON list of {"image": path under the image root, "question": text}; errors name the record."""
    try:
        records = read_json_file(path, "question file")  # strict: no FIFO, NaN or too-deep nesting
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


def _read_answers(out: Path) -> dict[tuple[str, str], str]:
    """The answers an earlier run wrote to `out`; a file that is not such a list is refused, not replaced."""
    try:
        data = read_json_file(out, "answer file")
    except FileNotFoundError:
        return {}
    except ValueError as error:
        raise ValueError(f"{error}; move it away or choose another output (it is not replaced)") from None
    if not isinstance(data, list) or not all(
        isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("image", "question", "answer"))
        for r in data
    ):
        raise ValueError(
            f"{out}: exists but is not an answer file of this tool (a list of image/question/answer "
            "records); move it away or choose another output (it is not replaced)"
        )
    return {(r["image"], r["question"]): r["answer"] for r in data}


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
    killed run restarted with the same command ends with the same file. Everything is checked before the
    first question is asked: the records, every image name (no escape from the root), that `out` is not the
    question file or an image and that an existing `out` is an answer file.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    records = read_questions(questions)
    check_output_location(out, {"question file": questions, "image root": image_root}, [image_root])
    paths = []
    for index, record in enumerate(records):
        try:
            paths.append(safe_join(image_root, record["image"]))
        except ValueError as error:
            raise ValueError(f"{questions}: record {index}: {error}") from None
    if Path(out).resolve() in paths:
        raise OutputLocationError(f"{out}: the output would replace an image that a question asks about")
    done = _read_answers(Path(out))
    results = [
        dict(r, answer=done[(r["image"], r["question"])]) if (r["image"], r["question"]) in done else None
        for r in records
    ]
    todo = [i for i, result in enumerate(results) if result is None]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        answers = predictor(
            [paths[i] for i in chunk],
            [records[i]["question"] for i in chunk],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        ).answers
        for i, answer in zip(chunk, answers, strict=True):
            results[i] = dict(records[i], answer=answer)
        atomic_write_json(out, [r for r in results if r is not None])
    atomic_write_json(out, results)
    return results
