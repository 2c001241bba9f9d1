"""VQA readers on fixture files in each real layout, bad input, the synthetic set and the VQA evaluators."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo.data.vqa import (
    VQADataModule,
    VQAFormatError,
    majority_answers,
    read_gqa,
    read_lcs_captions,
    read_llava_instruct,
    read_mmvp,
    read_multiple_choice,
    synthetic_records,
)
from zoo.evaluation.vqa import (
    MMVPPairAccuracy,
    MultipleChoiceAccuracy,
    VQAAccuracy,
    match_option,
    normalize_answer,
)


@pytest.fixture()
def image_root(tmp_path):
    root = tmp_path / "images"
    (root / "coco" / "train2017").mkdir(parents=True)
    for name in (
        "coco/train2017/000000033471.jpg",
        "00453/004539375.jpg",
        "n161313.jpg",
        "1.jpg",
        "2.jpg",
        "3.jpg",
        "4.jpg",
        "mc/cat.png",
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 16, 3), 120, np.uint8)).save(root / name)
    return root


def _write(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_llava_instruction_json_gives_one_record_per_turn(tmp_path, image_root):
    data = [
        {
            "id": "000000033471",
            "image": "coco/train2017/000000033471.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
                {"from": "gpt", "value": "The bus in the image is white and red."},
                {"from": "human", "value": "What feature can be seen on the back of the bus?"},
                {"from": "gpt", "value": "The back of the bus features an advertisement."},
            ],
        },
        {
            "id": "text-only",
            "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
        },
    ]
    records = read_llava_instruct(_write(tmp_path / "mix.json", data), image_root)
    assert [r.question for r in records] == [
        "What are the colors of the bus in the image?",
        "What feature can be seen on the back of the bus?",
    ]
    assert records[1].answers == ("The back of the bus features an advertisement.",)
    assert records[0].image == (image_root / "coco/train2017/000000033471.jpg").resolve()


def test_instruction_json_without_image_placeholder_names_the_record(tmp_path, image_root):
    data = [
        {
            "id": "42",
            "image": "n161313.jpg",
            "conversations": [
                {"from": "human", "value": "What is this?"},
                {"from": "gpt", "value": "A dog."},
            ],
        }
    ]
    with pytest.raises(VQAFormatError, match=r"record 0 \(id 42\).*no '<image>' placeholder"):
        read_llava_instruct(_write(tmp_path / "bad.json", data), image_root)


def test_image_path_escaping_the_root_names_the_record(tmp_path, image_root):
    data = [
        {
            "id": "7",
            "image": "../../etc/passwd",
            "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "x"}],
        }
    ]
    with pytest.raises(VQAFormatError, match=r"record 0 \(id 7\).*escapes"):
        read_llava_instruct(_write(tmp_path / "escape.json", data), image_root)


def test_empty_question_names_the_record(tmp_path, image_root):
    data = {"q1": {"imageId": "n161313", "question": "  ", "answer": "no"}}
    with pytest.raises(VQAFormatError, match="question q1: empty question"):
        read_gqa(_write(tmp_path / "gqa.json", data), image_root)


def test_lcs_captions_in_both_layouts(tmp_path, image_root):
    conversation = [
        {
            "id": "004539375",
            "image": "00453/004539375.jpg",
            "conversations": [
                {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
                {"from": "gpt", "value": "select luxury furniture 3 - inch gel memory foam mattress topper"},
            ],
        }
    ]
    meta = [{"id": "004539375", "image": "00453/004539375.jpg", "blip_caption": "a mattress topper"}]
    first = read_lcs_captions(_write(tmp_path / "lcs.json", conversation), image_root)
    second = read_lcs_captions(_write(tmp_path / "meta.json", meta), image_root)
    assert first[0].caption == "select luxury furniture 3 - inch gel memory foam mattress topper"
    assert second[0].answers == ("a mattress topper",) and second[0].question == ""


def test_gqa_and_mmvp_readers(tmp_path, image_root):
    gqa = {
        "201307251": {
            "imageId": "n161313",
            "question": "Is it overcast?",
            "answer": "no",
            "fullAnswer": "No, it is clear.",
            "types": {"structural": "verify", "semantic": "attr"},
        }
    }
    records = read_gqa(_write(tmp_path / "testdev_balanced_questions.json", gqa), image_root)
    assert records[0].answers == ("no",) and records[0].question_type == "verify"
    csv = (
        "Index,Question,Options,Correct Answer\n"
        '1,Are the butterfly\'s wings closer to being open or closed?,"(a) Open (b) Closed",(a)\n'
        '2,Are the butterfly\'s wings closer to being open or closed?,"(a) Open (b) Closed",(b)\n'
        '3,Is the dog facing left or right?,"(a) Left (b) Right",(a)\n'
        '4,Is the dog facing left or right?,"(a) Left (b) Right",(b)\n'
    )
    (tmp_path / "Questions.csv").write_text(csv)
    mmvp = read_mmvp(tmp_path / "Questions.csv", image_root)
    assert [r.pair_id for r in mmvp] == [0, 0, 1, 1]
    assert mmvp[0].question.endswith("Options: (a) Open (b) Closed") and mmvp[1].answers == ("(b)",)


def test_multiple_choice_reader_accepts_index_or_letter_and_refuses_bad_answers(tmp_path, image_root):
    data = [
        {"image": "mc/cat.png", "question": "What animal?", "options": ["dog", "cat"], "answer": "B"},
        {"image": "mc/cat.png", "question": "Colour?", "options": ["grey", "red", "blue"], "answer": 0},
    ]
    records = read_multiple_choice(_write(tmp_path / "mc.json", data), image_root)
    assert [r.answer_index for r in records] == [1, 0]
    assert records[0].question == "What animal? Options: (A) dog (B) cat"
    data[0]["answer"] = "D"
    with pytest.raises(VQAFormatError, match="record 0.*'answer' must be an option"):
        read_multiple_choice(_write(tmp_path / "mc_bad.json", data), image_root)


def test_file_datamodule_items_and_evaluator_kind(tmp_path, image_root):
    gqa = {"1": {"imageId": "n161313", "question": "Is it overcast?", "answer": "no"}}
    path = _write(tmp_path / "gqa.json", gqa)
    data = VQADataModule(
        source="files",
        image_size=(8, 8),
        test_format="gqa",
        test_file=path,
        test_image_root=str(image_root),
        batch_size=1,
    )
    batch = next(iter(data.test_dataloader()))
    assert batch["image"].shape == (1, 3, 8, 8) and batch["text"] == ["Is it overcast?"]
    assert batch["answer"] == ["no"] and batch["sample_id"].tolist() == [0]
    assert data.evaluator_kind == "vqa"
    assert VQADataModule(test_format="mmvp").evaluator_kind == "mmvp"


def test_synthetic_vqa_is_deterministic_with_held_out_images_and_donors(tmp_path):
    pixels, items = synthetic_records(6, "train", (32, 32), str(tmp_path))
    again, cached = synthetic_records(6, "train", (32, 32), str(tmp_path))  # from the cache
    fresh, rerendered = synthetic_records(6, "train", (32, 32), None)
    test_pixels, _ = synthetic_records(6, "test", (32, 32), None)
    assert np.array_equal(pixels, again) and np.array_equal(pixels, fresh) and items == cached == rerendered
    assert not any(np.array_equal(a, b) for a in pixels for b in test_pixels)
    assert {item["question_type"] for item in items} <= {"count", "colour", "position", "pose"}
    for item in items:
        assert item["answer"] and " " not in item["answer"]
        if item["donor_caption"]:
            assert item["donor_answer"] != item["answer"]
    overall, by_type = majority_answers(items)
    assert overall in {item["answer"] for item in items} and set(by_type) <= {
        "count",
        "colour",
        "position",
        "pose",
    }


def test_answer_normalisation_and_exact_match_accuracy():
    assert normalize_answer("  Two. ") == "2" and normalize_answer("The Red") == "red"
    assert normalize_answer("3.5") == "3.5"
    evaluator = VQAAccuracy()
    evaluator.update(
        [0, 1, 2],
        ["Two", "blue", "left!"],
        ["two", "red", ["left", "on the left"]],
        ["count", "colour", "position"],
    )
    evaluator.update([0], ["wrong"], ["two"], ["count"])  # a padding repeat: the first record wins
    metrics = evaluator.compute()
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["count"] == 3
    assert metrics["accuracy/colour"] == 0 and metrics["accuracy/count"] == 1


def test_mmvp_pair_counts_only_when_both_are_right():
    evaluator = MMVPPairAccuracy()
    evaluator.update(
        [0, 1, 2, 3], ["(a) Open", "a", "(b)", "Right"], ["(a)", "(b)", "(b)", "(b) Right"], [0, 0, 1, 1]
    )
    metrics = evaluator.compute()
    assert metrics["question_accuracy"] == pytest.approx(0.75)
    assert metrics["pair_accuracy"] == pytest.approx(0.5) and metrics["pairs"] == 2


def test_multiple_choice_accuracy_matches_letters_and_texts():
    assert match_option("B", ["dog", "cat"]) == 1 and match_option("(a) dog", ["dog", "cat"]) == 0
    assert match_option("cat", ["dog", "cat"]) == 1 and match_option("a bird", ["dog", "cat"]) is None
    evaluator = MultipleChoiceAccuracy()
    evaluator.update(
        [0, 1, 2], ["B.", "cat", "bird"], [["dog", "cat"], ["dog", "cat"], ["dog", "cat"]], [1, 0, 1]
    )
    metrics = evaluator.compute()
    assert metrics["accuracy"] == pytest.approx(1 / 3) and metrics["unmatched"] == pytest.approx(1 / 3)


def test_eval_tool_scores_a_multiple_choice_file(tmp_path, image_root):
    import sys

    from zoo.registry import REPO_ROOT, get_family

    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import eval as eval_tool

    data = [{"image": "mc/cat.png", "question": "What animal?", "options": ["dog", "cat"], "answer": "B"}]
    path = _write(tmp_path / "mc.json", data)
    smoke = [a.replace("{tmp}", str(tmp_path)) for a in get_family("mustafar").smoke_overrides]
    metrics = eval_tool.main(
        [
            "--config",
            str(REPO_ROOT / "configs/tiny/mustafar_stage2.yaml"),
            "--out",
            str(tmp_path / "eval"),
            *smoke,
            "--data.init_args.source",
            "files",
            "--data.init_args.test_format",
            "multiple_choice",
            "--data.init_args.test_file",
            path,
            "--data.init_args.test_image_root",
            str(image_root),
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    assert set(metrics) == {"test/accuracy", "test/unmatched", "test/count"} and metrics["test/count"] == 1
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == metrics


def test_caption_cache_is_keyed_by_the_generator_source(tmp_path, monkeypatch):
    import shutil

    import zoo.data.synthetic as synthetic
    import zoo.data.vqa as vqa

    # The fingerprint follows the generators' source: any edit to one of them gives another key.
    copy = tmp_path / "generators"
    shutil.copytree(Path(synthetic.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = synthetic.source_fingerprint(copy)
    assert before == synthetic.generator_fingerprint()
    (copy / "captions.py").write_text((copy / "captions.py").read_text() + "\n# edited\n")
    assert synthetic.source_fingerprint(copy) != before
    # The cache is read back under its key (planted zeros come back) ...
    cache = tmp_path / "cache"
    pixels, items = synthetic_records(3, "test", (32, 32), str(cache))
    stem = f"captions_test_3_32x32_{synthetic.generator_fingerprint()}"
    assert sorted(path.name for path in cache.iterdir()) == [f"{stem}.json", f"{stem}.npz"]
    np.savez_compressed(cache / f"{stem}.npz", images=np.zeros_like(pixels))
    assert not synthetic_records(3, "test", (32, 32), str(cache))[0].any()
    # ... and another generator version renders afresh instead of reading it.
    monkeypatch.setattr(vqa, "generator_fingerprint", lambda: "0ther000")
    fresh, again = synthetic_records(3, "test", (32, 32), str(cache))
    assert np.array_equal(fresh, pixels) and again == items
    assert (cache / "captions_test_3_32x32_0ther000.json").is_file()
