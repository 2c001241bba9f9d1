"""VQA and caption data: readers for LLaVA instruction JSON, LCS-558K captions, MMVP, GQA and a generic
multiple-choice layout; the synthetic VQA set; the datamodule of the Mustafar family.

Every reader returns `VQARecord`s; image paths are joined under the image root with `safe_join` (a path that
escapes the root is an error naming the record), empty questions or answers are errors naming the record.
Items are `image_text` items (zoo.data.samples): image [3, H, W] in [0, 1], text (the question), plus answer,
caption, question_type, pair_id, options ("\\n"-joined), answer_index, donor_caption and donor_answer.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler

from zoo.data.datamodule import ZooDataModule
from zoo.data.images import load_rgb
from zoo.data.synthetic import generator_fingerprint
from zoo.utils.files import JSONFileError, atomic_open, atomic_write_text, read_json_file, safe_join

FORMATS = ("llava", "lcs", "gqa", "mmvp", "multiple_choice")
IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class VQARecord:
    """One question (or caption) about one image."""

    image: Path
    question: str
    answers: tuple[str, ...]  # the target first; VQA accepts any of them
    where: str  # "file: record id" for error messages
    question_type: str = ""
    caption: str = ""
    pair_id: int = -1  # MMVP pair
    options: tuple[str, ...] = ()  # multiple choice
    answer_index: int = -1


class VQAFormatError(ValueError):
    """A record of a VQA/caption file is malformed; the message names the file and the record."""


def _load_json(path: str | os.PathLike) -> Any:
    # Strict: regular files only (a FIFO never blocks), NaN/Infinity and too-deep nesting refused by name.
    try:
        return read_json_file(path, "VQA file")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except JSONFileError as error:
        raise VQAFormatError(str(error)) from None


def _image(root: str | os.PathLike, name: Any, where: str) -> Path:
    if not isinstance(name, str) or not name:
        raise VQAFormatError(f"{where}: missing 'image' file name")
    try:
        return safe_join(root, name)
    except ValueError as error:
        raise VQAFormatError(f"{where}: {error}") from None


def _text(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise VQAFormatError(f"{where}: empty {what}")
    return value.strip()


def _records(data: Any, path: str | os.PathLike, kind: str) -> list[tuple[str, dict]]:
    if not isinstance(data, list):
        raise VQAFormatError(f"{path}: a {kind} file is a JSON list of records; got {type(data).__name__}")
    named = []
    for index, record in enumerate(data):
        where = f"{path}: record {index}"
        if not isinstance(record, dict):
            raise VQAFormatError(f"{where}: not a JSON object")
        named.append((f"{where} (id {record.get('id', '?')})", record))
    return named


def read_llava_instruct(path: str | os.PathLike, image_root: str | os.PathLike) -> list[VQARecord]:
    """LLaVA instruction JSON (llava_v1_5_mix665k.json): one record per human/gpt turn pair of each image.

    The first human turn must hold `<image>`; it is removed from the question (the prompt template places the
    image). Text-only conversations (no "image" field) are skipped: this encoder needs an image.
    """
    out = []
    for where, record in _records(_load_json(path), path, "LLaVA instruction"):
        if "image" not in record:
            continue
        image = _image(image_root, record["image"], where)
        turns = record.get("conversations")
        if not isinstance(turns, list) or len(turns) < 2:
            raise VQAFormatError(f"{where}: 'conversations' must list human/gpt turns")
        for index, turn in enumerate(turns):
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                raise VQAFormatError(f"{where}: conversations[{index}] needs a text 'value'")
        first = turns[0]["value"]
        if IMAGE_PLACEHOLDER not in first:
            raise VQAFormatError(f"{where}: the first human turn has no {IMAGE_PLACEHOLDER!r} placeholder")
        for turn in range(0, len(turns) - 1, 2):
            human, gpt = turns[turn], turns[turn + 1]
            if not (isinstance(human, dict) and isinstance(gpt, dict)) or (
                human.get("from"),
                gpt.get("from"),
            ) != ("human", "gpt"):
                raise VQAFormatError(f"{where}: turns {turn} and {turn + 1} are not a human/gpt pair")
            question = _text(human["value"].replace(IMAGE_PLACEHOLDER, ""), where, "question")
            out.append(VQARecord(image, question, (_text(gpt.get("value"), where, "answer"),), where))
    return out


def read_lcs_captions(path: str | os.PathLike, image_root: str | os.PathLike) -> list[VQARecord]:
    """LCS-558K captions (blip_laion_cc_sbu_558k.json, conversation layout; or the meta layout with
    "blip_caption"): one record per image, the caption as the answer and the caption field."""
    out = []
    for where, record in _records(_load_json(path), path, "LCS-558K caption"):
        image = _image(image_root, record.get("image"), where)
        if "blip_caption" in record:
            caption = _text(record["blip_caption"], where, "caption")
        else:
            turns = record.get("conversations")
            if not isinstance(turns, list) or len(turns) < 2 or not isinstance(turns[1], dict):
                raise VQAFormatError(f"{where}: needs 'conversations' [human, gpt] or 'blip_caption'")
            caption = _text(turns[1].get("value"), where, "caption")
        out.append(VQARecord(image, "", (caption,), where, "caption", caption))
    return out


def read_gqa(path: str | os.PathLike, image_root: str | os.PathLike) -> list[VQARecord]:
    """GQA balanced questions ({qid: {imageId, question, answer, types}}); images are <root>/<imageId>.jpg."""
    data = _load_json(path)
    if not isinstance(data, dict):
        raise VQAFormatError(f"{path}: GQA questions are a JSON object keyed by question id")
    out = []
    for qid, record in data.items():
        where = f"{path}: question {qid}"
        if not isinstance(record, dict):
            raise VQAFormatError(f"{where}: not a JSON object")
        image = _image(image_root, f"{record.get('imageId')}.jpg" if record.get("imageId") else None, where)
        kind = (record.get("types") or {}).get("structural", "")
        out.append(
            VQARecord(
                image,
                _text(record.get("question"), where, "question"),
                (_text(record.get("answer"), where, "answer"),),
                where,
                kind,
            )
        )
    return out


def read_mmvp(questions_csv: str | os.PathLike, image_root: str | os.PathLike) -> list[VQARecord]:
    """MMVP (Questions.csv: Index, Question, Options, Correct Answer; images <root>/<Index>.jpg); questions
    2k-1 and 2k form pair k. The question shown to the model is "Q Options: (a) .. (b) ..."."""
    path = Path(questions_csv)
    try:
        rows = list(csv.DictReader(path.read_text().splitlines()))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    needed = {"Index", "Question", "Options", "Correct Answer"}
    if rows and not needed <= set(rows[0]):
        raise VQAFormatError(f"{path}: columns {sorted(rows[0])}; MMVP needs {sorted(needed)}")
    out = []
    for row in rows:
        where = f"{path}: row Index {row.get('Index')}"
        try:
            index = int(row["Index"])
        except (TypeError, ValueError):
            raise VQAFormatError(f"{where}: Index must be an integer") from None
        question = _text(row["Question"], where, "question")
        options = _text(row["Options"], where, "options")
        out.append(
            VQARecord(
                _image(image_root, f"{index}.jpg", where),
                f"{question} Options: {options}",
                (_text(row["Correct Answer"], where, "answer"),),
                where,
                "mmvp",
                pair_id=(index - 1) // 2,
            )
        )
    return out


def read_multiple_choice(path: str | os.PathLike, image_root: str | os.PathLike) -> list[VQARecord]:
    """Generic multiple choice: a JSON list of {image, question, options: [..], answer: index or letter}."""
    out = []
    for where, record in _records(_load_json(path), path, "multiple-choice"):
        options = record.get("options")
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
            raise VQAFormatError(f"{where}: 'options' must list at least two strings")
        answer = record.get("answer")
        if isinstance(answer, str) and re.fullmatch(r"[A-Za-z]", answer.strip()):
            answer = ord(answer.strip().upper()) - ord("A")
        if not isinstance(answer, int) or not 0 <= answer < len(options):
            raise VQAFormatError(
                f"{where}: 'answer' must be an option index or letter; got {record.get('answer')!r}"
            )
        letters = " ".join(f"({chr(ord('A') + i)}) {option}" for i, option in enumerate(options))
        question = f"{_text(record.get('question'), where, 'question')} Options: {letters}"
        out.append(
            VQARecord(
                _image(image_root, record.get("image"), where),
                question,
                (chr(ord("A") + answer),),
                where,
                "multiple_choice",
                options=tuple(options),
                answer_index=answer,
            )
        )
    return out


READERS = {
    "llava": read_llava_instruct,
    "lcs": read_lcs_captions,
    "gqa": read_gqa,
    "mmvp": read_mmvp,
    "multiple_choice": read_multiple_choice,
}


def read_records(fmt: str, path: str | os.PathLike, image_root: str | os.PathLike) -> list[VQARecord]:
    """Read a file in one of FORMATS."""
    if fmt not in READERS:
        raise ValueError(f"unknown VQA format {fmt!r}; expected one of {FORMATS}")
    records = READERS[fmt](path, image_root)
    if not records:
        raise VQAFormatError(f"{path}: no usable records")
    return records


# ------------------------------------------------------------------------------------------------ synthetic
def question_type(question: str) -> str:
    """Synthetic question kind: count, colour, position or pose."""
    if question.startswith("how many"):
        return "count"
    if question.startswith("what colour"):
        return "colour"
    if question.startswith("what pose"):
        return "pose"
    return "position"


def synthetic_records(
    images: int, split: str, image_size: tuple[int, int], cache_dir: str | None, task: str = "vqa"
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """uint8 images [N, H, W, 3] of the captioned generator and one dict per (image, question) or caption.

    Rendered once per (split, count, size, generator source) and cached as .npz + .json in `cache_dir`
    (written atomically, the .json last; rendering costs more than a tiny training step).
    """
    from zoo.data.synthetic.captions import CaptionDataset

    height, width = image_size
    stem = f"captions_{split}_{images}_{height}x{width}_{generator_fingerprint()}"
    cache = Path(cache_dir) / stem if cache_dir else None
    if cache is not None and cache.with_suffix(".npz").is_file() and cache.with_suffix(".json").is_file():
        pixels = np.load(cache.with_suffix(".npz"))["images"]
        texts = json.loads(cache.with_suffix(".json").read_text())
    else:
        dataset = CaptionDataset(images, split, height, width)
        rendered = [dataset.item(i) for i in range(images)]
        pixels = np.stack([np.round(r.image * 255).astype(np.uint8) for r in rendered])
        texts = [{"caption": r.caption, "questions": [list(q) for q in r.questions]} for r in rendered]
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(cache.with_suffix(".npz")) as handle:
                np.savez_compressed(handle, images=pixels)
            atomic_write_text(cache.with_suffix(".json"), json.dumps(texts))  # last: marks the set complete
    if task == "caption":
        return pixels, [
            {
                "image": i,
                "question": "",
                "answer": t["caption"],
                "caption": t["caption"],
                "question_type": "caption",
            }
            for i, t in enumerate(texts)
        ]
    items = []
    for index, text in enumerate(texts):
        for question, answer in text["questions"]:
            items.append(
                {
                    "image": index,
                    "question": question,
                    "answer": answer,
                    "caption": text["caption"],
                    "question_type": question_type(question),
                }
            )
    _add_donors(items, texts)
    return pixels, items


def _add_donors(items: list[dict[str, Any]], texts: list[dict[str, Any]]) -> None:
    """For the leakage test: the caption of the next image whose answer to the same question differs."""
    answers: dict[str, list[tuple[int, str]]] = {}
    for index, text in enumerate(texts):
        for question, answer in text["questions"]:
            answers.setdefault(question, []).append((index, answer))
    for item in items:
        candidates = answers[item["question"]]
        start = next(k for k, (index, _) in enumerate(candidates) if index == item["image"])
        donor = next(
            ((i, a) for i, a in candidates[start + 1 :] + candidates[:start] if a != item["answer"]), None
        )
        item["donor_caption"] = texts[donor[0]]["caption"] if donor else ""
        item["donor_answer"] = donor[1] if donor else ""


def majority_answers(items: list[dict[str, Any]]) -> tuple[str, dict[str, str]]:
    """The most frequent answer overall and per question type (the majority-answer baselines)."""
    overall = Counter(item["answer"] for item in items).most_common(1)[0][0]
    by_type: dict[str, Counter] = {}
    for item in items:
        by_type.setdefault(item["question_type"], Counter())[item["answer"]] += 1
    return overall, {kind: counts.most_common(1)[0][0] for kind, counts in by_type.items()}


class SyntheticVQADataset(Dataset):
    """The captioned generator's images with their questions (task "vqa") or captions (task "caption")."""

    def __init__(
        self,
        images: int,
        split: str,
        image_size: tuple[int, int],
        cache_dir: str | None = None,
        task: str = "vqa",
    ) -> None:
        if task not in ("vqa", "caption"):
            raise ValueError(f"task must be 'vqa' or 'caption'; got {task!r}")
        self.pixels, self.items = synthetic_records(images, split, tuple(image_size), cache_dir, task)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """An image_text item (see the module docstring)."""
        item = self.items[index]
        image = torch.from_numpy(self.pixels[item["image"]]).permute(2, 0, 1).float() / 255  # [3, H, W]
        return {
            "image": image,
            "text": item["question"],
            "answer": item["answer"],
            "caption": item["caption"],
            "question_type": item["question_type"],
            "pair_id": -1,
            "options": "",
            "answer_index": -1,
            "donor_caption": item.get("donor_caption", ""),
            "donor_answer": item.get("donor_answer", ""),
        }


class VQAFileDataset(Dataset):
    """Records of a reader as items, images resized to `image_size` (bilinear)."""

    def __init__(self, records: list[VQARecord], image_size: tuple[int, int]) -> None:
        self.records, self.image_size = records, tuple(image_size)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """An image_text item (see the module docstring)."""
        record = self.records[index]
        rgb = torch.from_numpy(load_rgb(record.image, record.where)).permute(2, 0, 1)[None]  # [1, 3, h, w]
        image = F.interpolate(
            rgb, size=self.image_size, mode="bilinear", align_corners=False, antialias=True
        )[0]
        return {
            "image": image.clamp(0, 1),
            "text": record.question,
            "answer": record.answers[0],
            "caption": record.caption,
            "question_type": record.question_type,
            "pair_id": record.pair_id,
            "options": "\n".join(record.options),
            "answer_index": record.answer_index,
            "donor_caption": "",
            "donor_answer": "",
        }


class VQADataModule(ZooDataModule):
    """Training and evaluation data of the Mustafar family.

    source "synthetic": the captioned generator (held-out val/test images; task "caption" for stage 1, "vqa"
    for stage 2). source "files": `train_format` / `train_file` / `train_image_root` (llava or lcs) and the
    same
    for val/test (any of FORMATS; the test format picks the evaluator: exact-match VQA, MMVP pairs or multiple
    choice).
    """

    sample_kind = "image_text"

    def __init__(
        self,
        source: str = "synthetic",
        task: str = "vqa",
        image_size: tuple[int, int] = (64, 64),
        train_images: int = 2000,
        val_images: int = 64,
        test_images: int = 256,
        train_format: str | None = None,
        train_file: str | None = None,
        train_image_root: str | None = None,
        val_format: str | None = None,
        val_file: str | None = None,
        val_image_root: str | None = None,
        test_format: str | None = None,
        test_file: str | None = None,
        test_image_root: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = "outputs/cache/vqa",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if source not in ("synthetic", "files"):
            raise ValueError(f"source must be 'synthetic' or 'files'; got {source!r}")
        self._sets: dict[str, Dataset] = {}

    @property
    def evaluator_kind(self) -> str:
        """ "vqa", "mmvp" or "multiple_choice": what the test split is scored with."""
        return {"mmvp": "mmvp", "multiple_choice": "multiple_choice"}.get(
            self.hparams.test_format or "", "vqa"
        )

    def dataset(self, split: str) -> Dataset:
        """The dataset of "train", "val" or "test" (built on first use)."""
        if split not in self._sets:
            hp = self.hparams
            if hp.source == "synthetic":
                count = {"train": hp.train_images, "val": hp.val_images, "test": hp.test_images}[split]
                self._sets[split] = SyntheticVQADataset(count, split, hp.image_size, hp.cache_dir, hp.task)
            else:
                fmt, path, root = (hp[f"{split}_format"], hp[f"{split}_file"], hp[f"{split}_image_root"])
                if not (fmt and path and root):
                    raise ValueError(
                        f"source 'files' needs {split}_format, {split}_file and {split}_image_root"
                    )
                self._sets[split] = VQAFileDataset(read_records(fmt, path, root), hp.image_size)
        return self._sets[split]

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (seeded generator, full batches only)."""
        sampler = RandomSampler(
            self.dataset("train"), generator=torch.Generator().manual_seed(self.hparams.seed)
        )
        return self.loader(
            self.dataset("train"),
            self.hparams.batch_size,
            self.hparams.num_workers,
            sampler=sampler,
            drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        """Held-out validation batches in order."""
        size = self.hparams.eval_batch_size or self.hparams.batch_size
        return self.eval_loader(self.dataset("val"), size, self.hparams.num_workers, "vqa val")

    def test_dataloader(self) -> DataLoader:
        """Held-out test batches in order."""
        size = self.hparams.eval_batch_size or self.hparams.batch_size
        return self.eval_loader(self.dataset("test"), size, self.hparams.num_workers, "vqa test")
