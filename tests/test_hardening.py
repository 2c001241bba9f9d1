"""Hardening: a messy corpus against the tools and the Annotator; each case ends correct or as a named error.

The corpus (built in tmp_path) holds colliding names, special files, names that are not UTF-8, GIF/PPM/PGM and
1-pixel-wide images, symlink escapes, outputs overlapping inputs, inputs changed between runs, NaN boxes, a
full disk, two threads on one predictor and bad arguments. Every case asserts either the right result, or an
error that names the problem with nothing lost (no input replaced, no file written outside the output folder).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.inference.annotate import AnnotationError, Annotator
from zoo.utils import files
from zoo.utils.files import (
    NonFiniteJSONError,
    OutputLocationError,
    OutputWriteError,
    atomic_write_json,
    check_unique_outputs,
    output_stem,
    safe_join,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
RESOLUTION = 32  # Lotus processing resolution: the smallest useful, for speed


def tool(name: str):
    """A tool's module from tools/ (its main(argv) runs in this interpreter)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under `root` by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A small deterministic RGB picture."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def pose() -> object:
    """The shipped tiny SDPose body model."""
    torch.set_num_threads(1)
    return zoo.load("tiny-sdpose-body")


@pytest.fixture(scope="module")
def depth() -> object:
    """The shipped tiny Lotus-D depth model."""
    return zoo.load("tiny-lotus-depth-d")


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    """The messy folder: colliding names, formats, a FIFO, a non-UTF-8 name, 1-pixel-wide images."""
    root = tmp_path / "photos"
    root.mkdir()
    for index, name in enumerate(
        ["frame.0001.jpg", "frame.0002.jpg", "a.jpg", "a_vis.jpg", "x.jpg", "x.png"]
    ):
        photo(40 + 8 * index, 32, index).save(root / name)
    frames = [photo(24, 16, 10), photo(24, 16, 11)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    photo(20, 12, 12).convert("L").save(root / "gray.pgm")
    photo(20, 12, 13).save(root / "rgb.ppm")
    photo(1, 40, 14).save(root / "thin.png")  # 1 pixel wide
    photo(1, 1, 15).save(root / "dot.png")
    photo(16, 16, 16).save(os.fsdecode(bytes(root) + b"/caf\xe9.png"))  # Latin-1 name: not valid UTF-8
    os.mkfifo(root / "fifo.jpg")
    (root / "broken.jpg").write_bytes(b"not an image")
    return root


OUTCOMES = {"correct": 0, "named error": 0}  # counted for the report; checked in the last test


def outcome(kind: str) -> None:
    """Count one corpus case's outcome."""
    OUTCOMES[kind] += 1


# ---------------------------------------------------------------------------------------------------- naming
def test_output_names_are_injective() -> None:
    names = ["frame.0001.jpg", "frame.0002.jpg", "a.jpg", "a_vis.jpg", "x.jpg", "x.png", "d/a.jpg", "d.jpg"]
    kinds = [".png", ".npy", "_vis.png", ".json"]
    outputs = [output_stem(name) + kind for name in names for kind in kinds]
    assert len(set(outputs)) == len(outputs)
    assert not set(outputs) & set(names)  # an output never takes an input's name
    with pytest.raises(OutputLocationError, match=r"'a\.jpg' and '\./a\.jpg'"):
        check_unique_outputs([("a.jpg", ["a.jpg.png"]), ("./a.jpg", [output_stem("./a.jpg") + ".png"])])
    for bad in ("../x.jpg", "/abs.jpg", ""):
        with pytest.raises(ValueError, match="cannot name an output"):
            output_stem(bad)
    outcome("correct")


def test_messy_folder_annotated_or_reported(
    corpus: Path, tmp_path: Path, pose: object, depth: object
) -> None:
    out = tmp_path / "out"
    user_temp = out / "depth" / ".notes.abcdefgh.tmp"  # a user's file that looks like a temp name
    user_temp.parent.mkdir(parents=True)
    user_temp.write_text("mine")
    summary = Annotator(
        {"pose": pose, "depth": depth}, out, batch_size=4, processing_resolution=RESOLUTION, progress=False
    ).run(corpus)
    failures: dict[str, list[dict]] = {}
    for failure in json.loads((out / "failures.json").read_text()):
        failures.setdefault(failure["file"], []).append(failure)
    assert failures.pop("broken.jpg") == [{"file": "broken.jpg", "reason": "not an image file PIL can read"}]
    assert failures.pop("fifo.jpg") == [
        {"file": "fifo.jpg", "reason": "not a regular file (a FIFO); only regular files are read"}
    ]
    assert summary.images == 14
    # Every readable input has its own outputs: no name lost a suffix or shadowed another's.
    for name in [
        "frame.0001.jpg",
        "frame.0002.jpg",
        "a.jpg",
        "a_vis.jpg",
        "x.jpg",
        "x.png",
        "anim.gif",
        "gray.pgm",
        "rgb.ppm",
        os.fsdecode(b"caf\xe9.png"),
        "thin.png",
        "dot.png",
    ]:
        size = Image.open(safe_join(corpus, name)).size
        outputs = {"depth": [f"{name}.npy", f"{name}.png", f"{name}_vis.png"], "pose": [f"{name}_vis.png"]}
        refused = [key for failure in failures.get(name, []) for key in failure["models"]]
        # 1-pixel-wide images work, or a model refuses them cleanly: listed with the model, none of its files.
        assert name in ("thin.png", "dot.png") or not refused, failures[name]
        for key, names in outputs.items():
            written = [(out / key / output).is_file() for output in names]
            assert written == [key not in refused] * len(names), (name, key, failures.get(name))
        if "depth" not in refused:
            assert np.load(out / "depth" / f"{name}.npy").shape == (size[1], size[0], 1), name
            assert Image.open(out / "depth" / f"{name}_vis.png").size == size, name
        if "pose" not in refused:
            assert Image.open(out / "pose" / f"{name}_vis.png").size == size, name
        outcome("named error" if refused else "correct")
    assert summary.failed == 2 + len(failures)
    print(f"\n1-pixel-wide images: {failures}", file=sys.stderr)
    outcome("named error")  # the FIFO: listed with its reason, never opened
    outcome("named error")  # a text file named .jpg
    assert user_temp.read_text() == "mine"  # the temp sweep only removes our own temp names
    outcome("correct")
    # Results name the non-UTF-8 file as Python does (surrogate escape), and the JSON is strict.
    images = json.loads((out / "pose" / "annotations.json").read_text())["images"]
    assert os.fsdecode(b"caf\xe9.png") in {image["file_name"] for image in images}
    # Output files respect the umask like any file the user creates.
    mask = os.umask(0)
    os.umask(mask)
    for path in [out / "failures.json", out / "depth" / "x.jpg.png", out / "pose" / "results.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    outcome("correct")

    # Resume: a changed source is redone (its whole batch rewritten), a fixed failure is retried.
    photo(96, 64, 99).save(corpus / "x.jpg")
    os.unlink(corpus / "fifo.jpg")
    photo(8, 8, 98).save(corpus / "fifo.jpg")
    again = Annotator(
        {"pose": pose, "depth": depth}, out, batch_size=4, processing_resolution=RESOLUTION, progress=False
    ).run(corpus)
    assert (again.annotated, again.failed) == (summary.annotated + 1, summary.failed - 1)
    assert np.load(out / "depth" / "x.jpg.npy").shape == (64, 96, 1)
    assert (out / "depth" / "fifo.jpg.png").is_file()
    fresh = tmp_path / "fresh"
    fresh_user = fresh / "depth" / ".notes.abcdefgh.tmp"
    fresh_user.parent.mkdir(parents=True)
    fresh_user.write_text("mine")
    Annotator(
        {"pose": pose, "depth": depth}, fresh, batch_size=4, processing_resolution=RESOLUTION, progress=False
    ).run(corpus)
    assert tree(out) == tree(
        fresh
    )  # the resumed folder equals a fresh run on the changed inputs, byte for byte
    outcome("correct")
    outcome("correct")


# ----------------------------------------------------------------------------------------------------
# locations
def test_outputs_never_overlap_inputs(corpus: Path, tmp_path: Path, depth: object, realdata: Path) -> None:
    before = tree(corpus)
    annotator = Annotator({"depth": depth}, corpus, processing_resolution=RESOLUTION, progress=False)
    with pytest.raises(OutputLocationError, match="overlaps the input folder .* are the same"):
        annotator.run(corpus)  # --out equal to --input
    outcome("named error")
    with pytest.raises(OutputLocationError, match="input folder lies inside the output folder"):
        Annotator({"depth": depth}, tmp_path, processing_resolution=RESOLUTION, progress=False).run(corpus)
    outcome("named error")
    coco = tmp_path / "list.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}]}))
    with pytest.raises(OutputLocationError, match="output folder lies inside the image root"):
        Annotator({"depth": depth}, corpus / "sub", processing_resolution=RESOLUTION, progress=False).run(
            coco, image_root=corpus
        )  # a COCO list's image root may not hold the output
    outcome("named error")
    # A symlinked output sub-folder pointing at the inputs.
    out = tmp_path / "linked"
    out.mkdir()
    (out / "depth").symlink_to(corpus)
    with pytest.raises(OutputLocationError, match="escapes the output folder"):
        Annotator({"depth": depth}, out, processing_resolution=RESOLUTION, progress=False).run(corpus)
    outcome("named error")
    # A file we did not write where an output would go, in a fresh output folder.
    foreign = tmp_path / "foreign"
    (foreign / "depth").mkdir(parents=True)
    (foreign / "depth" / "a.jpg.png").write_bytes(b"precious")
    with pytest.raises(OutputLocationError, match="not written by an annotation run"):
        Annotator({"depth": depth}, foreign, processing_resolution=RESOLUTION, progress=False).run(corpus)
    assert (foreign / "depth" / "a.jpg.png").read_bytes() == b"precious"
    assert tree(corpus) == before
    outcome("named error")

    # export_controlnet: --out at the image folder or the annotation file's folder is refused at start-up.
    export = tool("export_controlnet")
    annotations = tmp_path / "gt.json"
    annotations.write_text((realdata / "coco" / "test_coco.json").read_text())
    for argv in (
        ["--annotations", str(annotations), "--out", str(tmp_path)],
        ["--annotations", str(annotations), "--image-root", str(corpus), "--out", str(corpus)],
    ):
        with pytest.raises(SystemExit) as exit_info:
            export.main(argv)
        assert exit_info.value.code == 2
        outcome("named error")
    assert tree(corpus) == before
    # A file the export did not write, where it would write (a user's picture named like an output).
    out = tmp_path / "controlnet"
    out.mkdir()
    (out / "000000000785.jpg.png").write_bytes(b"someone's picture")
    assert export.main(["--annotations", str(annotations), "--out", str(out)]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["000000000785.jpg.png"]
    assert (out / "000000000785.jpg.png").read_bytes() == b"someone's picture"
    outcome("named error")
    (out / "000000000785.jpg.png").unlink()
    assert export.main(["--annotations", str(annotations), "--out", str(out)]) == 0
    assert export.main(["--annotations", str(annotations), "--out", str(out)]) == 0  # its own files: replaced
    outcome("correct")


def test_coco_ood_never_writes_outside_out(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    build = tool("build_coco_ood")
    images = tmp_path / "images"
    (images / "p" / "q" / "r" / "s").mkdir(parents=True)
    (images / "a").symlink_to(images / "p" / "q" / "r" / "s")
    photo(16, 12, 1).save(images / "x.jpg")
    photo(16, 12, 2).save(images / "ok.jpg")
    ann = tmp_path / "ann.json"

    def annotations(file_name: str) -> None:
        ann.write_text(
            json.dumps(
                {
                    "images": [{"id": 1, "file_name": file_name, "width": 16, "height": 12}],
                    "annotations": [],
                    "categories": [{"id": 1, "name": "person"}],
                }
            )
        )

    out = tmp_path / "deep" / "er" / "out"
    annotations("a/../../../../x.jpg")  # stays inside the image root only because `a` is a symlink
    assert (
        build.main(
            [
                "--ann",
                str(ann),
                "--image-root",
                str(images),
                "--out",
                str(out),
                "--styles",
                "oil",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "escapes" in capsys.readouterr().err
    # `out/oil/images/a/../../../../x.jpg` would be tmp/deep/er/x.jpg: nothing was written anywhere outside.
    assert [p for p in tmp_path.rglob("x.jpg") if p.parent != images] == [] and not (out / "oil").exists()
    outcome("named error")
    annotations("ok.jpg")
    sources = tree(images)
    gt = ann.read_bytes()
    for sheet in (ann, images / "ok.jpg"):  # --contact-sheet at the annotation file or a source image
        with pytest.raises(SystemExit) as exit_info:
            build.main(
                [
                    "--ann",
                    str(ann),
                    "--image-root",
                    str(images),
                    "--out",
                    str(out),
                    "--styles",
                    "oil",
                    "--contact-sheet",
                    str(sheet),
                    "--no-progress",
                ]
            )
        assert exit_info.value.code == 2
        outcome("named error")
    assert tree(images) == sources and ann.read_bytes() == gt


# ---------------------------------------------------------------------------------------------------- JSON,
# disk
def test_json_writers_refuse_non_finite(tmp_path: Path, pose: object) -> None:
    target = tmp_path / "results.json"
    with pytest.raises(NonFiniteJSONError, match=r"results\.json.*\[0\]\['bbox'\]\[1\]"):
        atomic_write_json(target, [{"bbox": [1.0, float("nan"), 2.0, 3.0]}])
    assert not target.exists() and not list(tmp_path.iterdir())
    outcome("named error")
    dets = tmp_path / "dets.json"
    dets.write_text('[{"image_id": 1, "category_id": 1, "bbox": [1, NaN, 4, 4], "score": 0.9}]')
    with pytest.raises(ValueError, match=r"dets\.json.*\[0\].*bbox"):
        Annotator({"pose": pose}, tmp_path / "out", det_file=dets, progress=False)
    outcome("named error")


def test_full_disk_is_named_and_a_rerun_finishes(
    corpus: Path, tmp_path: Path, depth: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real_replace = os.replace
    calls = {"n": 0}

    def full_after_some(source: str, target: str) -> None:
        calls["n"] += 1
        if calls["n"] > 20:  # the disk fills part-way through the run
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(source, target)

    (tmp_path / "a_file").write_text("")
    with pytest.raises(AnnotationError, match="a_file/out: cannot write the output folder"):
        Annotator({"depth": depth}, tmp_path / "a_file" / "out", progress=False).run(corpus)
    outcome("named error")
    monkeypatch.setattr(files.os, "replace", full_after_some)
    with pytest.raises(OutputWriteError, match="no space left on device"):
        Annotator({"depth": depth}, out, batch_size=2, processing_resolution=RESOLUTION, progress=False).run(
            corpus
        )
    monkeypatch.setattr(files.os, "replace", real_replace)
    assert not [p for p in out.rglob("*.tmp")]  # the failed write left no temp file
    Annotator({"depth": depth}, out, batch_size=2, processing_resolution=RESOLUTION, progress=False).run(
        corpus
    )
    reference = tmp_path / "reference"
    Annotator(
        {"depth": depth}, reference, batch_size=2, processing_resolution=RESOLUTION, progress=False
    ).run(corpus)
    assert tree(out) == tree(reference)
    outcome("named error")
    outcome("correct")


# ---------------------------------------------------------------------------------------------------- threads
@pytest.mark.parametrize("which", ["pose", "depth"])
def test_two_threads_get_their_own_results(which: str, pose: object, depth: object) -> None:
    predictor = {"pose": pose, "depth": depth}[which]
    inputs = [
        np.asarray(photo(48, 64, 1), dtype=np.float32) / 255,
        np.asarray(photo(64, 40, 2), np.float32) / 255,
    ]

    def call(image: np.ndarray) -> np.ndarray:
        if which == "pose":
            return predictor([image]).keypoints[0]
        return predictor([image], processing_resolution=RESOLUTION).prediction[0]

    expected = [call(image) for image in inputs]
    results: dict[int, list[np.ndarray]] = {0: [], 1: []}
    barrier = threading.Barrier(2)

    def worker(index: int) -> None:
        barrier.wait()
        for _ in range(8):
            results[index].append(call(inputs[index]))

    # A pause after the tapped decoder block (at the UNet's last layer) lets the other thread's forward run in
    # between, as a busy server would: with hooks that share one capture this hands features across (3 of 12).
    unet = (predictor.model if which == "pose" else predictor).backbone.unet
    handle = unet.conv_out.register_forward_hook(lambda *_: time.sleep(0.01))
    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        handle.remove()
    for index in (0, 1):
        assert len(results[index]) == 8
        assert all(np.array_equal(result, expected[index]) for result in results[index]), which
    outcome("correct")


# ----------------------------------------------------------------------------------------------------
# arguments
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--processing-resolution", "30"], "multiple of 8"),
        (["--processing-resolution", "-8"], "multiple of 8"),
        (["--batch-size", "0"], "batch_size"),
        (["--max-pixels", "-1"], "--max-pixels"),
    ],
)
def test_tool_arguments_checked_at_start(
    argv: list[str], message: str, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    annotate = tool("annotate")
    with pytest.raises(SystemExit) as exit_info:
        annotate.main(
            ["--input", str(corpus), "--models", "tiny-lotus-depth-d", "--out", str(tmp_path / "o"), *argv]
        )
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written, no model loaded
    outcome("named error")


@pytest.mark.parametrize(
    "kind, content, message",
    [
        ("list", '{"images": [{"id": true, "file_name": "a.jpg"}]}', r"list\.json: images\[0\]\['id'\]"),
        ("list", '{"images": [{"id": 1, "file_name": "a.jpg"}', r"list\.json"),
        (
            "dets",
            '[{"image_id": 1, "category_id": 1, "bbox": [0, 0, "4", 4], "score": 1}]',
            r"dets\.json.*bbox",
        ),
        (
            "dets",
            '[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, Infinity], "score": 1}]',
            r"dets\.json.*bbox",
        ),
    ],
)
def test_tool_input_files_checked_at_start(
    kind: str, content: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "in").mkdir()  # the list's folder is its image root, which may not hold the output
    listing, dets = tmp_path / "in" / "list.json", tmp_path / "dets.json"
    listing.write_text(content if kind == "list" else '{"images": [{"id": 1, "file_name": "a.jpg"}]}')
    dets.write_text(content if kind == "dets" else "[]")
    with pytest.raises(SystemExit) as exit_info:
        tool("annotate").main(
            [
                "--coco-images",
                str(listing),
                "--models",
                "tiny-sdpose-body",
                "--boxes",
                "det-file",
                str(dets),
                "--out",
                str(tmp_path / "o"),
            ]
        )
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "o").exists()
    outcome("named error")


def test_annotator_refuses_bad_options(tmp_path: Path, depth: object) -> None:
    for options in ({"batch_size": 0}, {"processing_resolution": 12}, {"max_pixels": 0}):
        with pytest.raises(ValueError, match=next(iter(options))):
            Annotator({"depth": depth}, tmp_path, **options)
        outcome("named error")


# ---------------------------------------------------------------------------------------------------- memory
def test_decoding_is_per_batch(tmp_path: Path, depth: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """64 mixed-size images at batch size 8: never more than one batch of decoded images alive, decode then
    predict."""
    from zoo.inference.annotate import inputs

    alive, events = {"now": 0, "peak": 0}, []
    original_load, original_process = inputs.load_rgb, Annotator.process_batch

    def released() -> None:
        alive["now"] -= 1

    def load(path: Path, **kwargs) -> np.ndarray:
        image = original_load(path, **kwargs)
        alive["now"] += 1
        alive["peak"] = max(alive["peak"], alive["now"])
        weakref.finalize(image, released)
        events.append("decode")
        return image

    def predict(self: Annotator, batch) -> int:
        events.append("predict")
        return original_process(self, batch)

    monkeypatch.setattr(inputs, "load_rgb", load)
    monkeypatch.setattr(Annotator, "process_batch", predict)
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(64):
        photo(24 + 8 * (index % 5), 16 + 8 * (index % 3), index).save(folder / f"{index:03d}.png")
    Annotator(
        {"depth": depth}, tmp_path / "out", batch_size=8, processing_resolution=RESOLUTION, progress=False
    ).run(folder)
    assert events == (["decode"] * 8 + ["predict"]) * 8
    assert alive["peak"] <= 8, alive  # memory is bounded by batch_size, not by the number of inputs
    outcome("correct")


# ---------------------------------------------------------------------------------------------------- weights
def test_broken_weights_are_named(tmp_path: Path, tiny_backbone_dir: Path) -> None:
    from zoo.backbones import StableDiffusionBackbone
    from zoo.backbones.stable_diffusion import CorruptWeightsError

    def folder(name: str, index: str | None = None) -> Path:
        root = tmp_path / name
        root.mkdir()
        for part in ("unet", "scheduler", "text_encoder", "tokenizer", "empty_prompt_embeds.safetensors"):
            (root / part).symlink_to(tiny_backbone_dir / part)
        if index is not None:
            (root / "model_index.json").write_text(index)
        return root

    truncated = folder("truncated")
    (truncated / "vae").mkdir()
    (truncated / "vae" / "config.json").symlink_to(tiny_backbone_dir / "vae" / "config.json")
    weights = truncated / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes((tiny_backbone_dir / "vae" / weights.name).read_bytes()[:1000])
    with pytest.raises(CorruptWeightsError, match=f"{weights}: corrupt, truncated"):
        StableDiffusionBackbone.from_pretrained(truncated)
    outcome("named error")
    folder("loop_a", json.dumps({"vae_from": str(tmp_path / "loop_b")}))
    folder("loop_b", json.dumps({"vae_from": str(tmp_path / "loop_a")}))
    with pytest.raises(CorruptWeightsError, match="'vae_from' chain loops"):
        StableDiffusionBackbone.from_pretrained(tmp_path / "loop_a")
    outcome("named error")
    with pytest.raises(CorruptWeightsError, match=r"model_index\.json: not valid JSON"):
        StableDiffusionBackbone.from_pretrained(folder("malformed", "{"))
    outcome("named error")


def test_outcome_counts() -> None:
    """Every corpus case above ended as a correct result or a named error (the counts go into the report)."""
    print(f"\nhardening corpus: {sum(OUTCOMES.values())} cases, {OUTCOMES}", file=sys.stderr)
    assert sum(OUTCOMES.values()) > 0
