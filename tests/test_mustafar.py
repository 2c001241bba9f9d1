"""Mustafar: tapped features vs a hand computation, guidance, the LLaVA integration, the export round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from zoo.models.mustafar.build import MustafarSpec, build, load_exported
from zoo.models.mustafar.features import DEFAULT_SITE, SDFeatureExtractor, load_features, save_features
from zoo.models.mustafar.model import FUSIONS, IMAGE_TOKEN

TOKENIZER = "checkpoints/tiny/mustafar/tokenizer"
LLM = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}
CLIP = {
    "image_size": 32,
    "patch_size": 16,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}
SECOND_SITE = "up_blocks.2.attentions.1.transformer_blocks.0.attn2:query"
SHIPPED_TEST_IMAGES = 128  # the first half of tiny-mustafar's held-out test images


@pytest.fixture()
def extractor(tiny_backbone) -> SDFeatureExtractor:
    tiny_backbone.configure(attention="math")  # bit-stable attention for exact comparisons
    return SDFeatureExtractor(tiny_backbone, [DEFAULT_SITE], timestep=50)


def _images(count: int = 2, size: int = 64) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_tapped_query_equals_to_q_computed_by_hand(extractor):
    backbone = extractor.backbone
    images = _images()
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    prompts = ["how many red spheres are there?", "what colour is the box?"]
    tokens = extractor(images, prompts, guidance_scale=1.0, noise=noise)  # cond = f_u + 1 (f_c - f_u)
    # By hand with diffusers: the input of attn2 is norm2 of the transformer block's hidden states.
    block = backbone.unet.get_submodule("up_blocks.1.attentions.1.transformer_blocks.0")
    seen = {}
    handle = block.norm2.register_forward_hook(lambda _m, _i, out: seen.setdefault("norm2", out))
    latents = backbone.vae.encode(images * 2 - 1).latent_dist.mode() * backbone.vae.config.scaling_factor
    timesteps = torch.full((2,), 50, dtype=torch.long)
    noisy = backbone.scheduler.add_noise(latents, noise, timesteps)
    ids = backbone.tokenizer(
        prompts,
        padding="max_length",
        max_length=backbone.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        context = backbone.text_encoder(ids)[0]
        backbone.unet(noisy, timesteps, encoder_hidden_states=context)
        expected = block.attn2.to_q(seen["norm2"])  # [B, h*w, C]
    handle.remove()
    assert tokens.shape == expected.shape == (2, 4, block.attn2.to_q.out_features)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)


def test_scale_zero_is_exactly_the_unconditional_pass(extractor):
    images, noise = _images(), torch.randn(2, 4, 8, 8)
    calls = []
    handle = extractor.backbone.unet.register_forward_pre_hook(
        lambda _m, args: calls.append(args[0].shape[0])
    )
    zero_a = extractor(images, ["red", "blue"], guidance_scale=0.0, noise=noise)
    zero_b = extractor(images, ["three people", "a green box"], guidance_scale=0.0, noise=noise)
    unprompted = extractor(images, None, guidance_scale=0.0, noise=noise)
    guided = extractor(images, ["red", "blue"], guidance_scale=4.0, noise=noise)
    handle.remove()
    assert calls == [2, 2, 2, 4]  # s = 0: one unconditional pass; s = 4: both halves in ONE call
    assert torch.equal(zero_a, zero_b) and torch.equal(zero_a, unprompted)
    assert not torch.allclose(guided, zero_a)


def test_conditional_features_change_with_the_prompt(extractor):
    images, noise = _images(), torch.randn(2, 4, 8, 8)
    red = extractor(images, ["a red sphere", "a red sphere"], guidance_scale=4.0, noise=noise)
    blue = extractor(images, ["three people", "three people"], guidance_scale=4.0, noise=noise)
    same = extractor(images, ["a red sphere", "a red sphere"], guidance_scale=4.0, noise=noise)
    assert torch.equal(red, same)  # reproducible with the same noise
    assert (red - blue).abs().max() > 1e-3


def test_generator_makes_features_reproducible_and_sites_concatenate(extractor, tmp_path):
    two = SDFeatureExtractor(extractor.backbone, [SECOND_SITE, DEFAULT_SITE], timestep=50)
    a = two(_images(), generator=torch.Generator().manual_seed(5))
    b = two(_images(), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert a.shape == (2, 16, sum(two.channels)) and two.num_tokens((64, 64)) == 16
    path = save_features(tmp_path / "f.safetensors", a, sites=two.sites, timestep=50)
    loaded, meta = load_features(path)
    assert torch.equal(loaded, a) and meta["sites"] == two.sites and meta["timestep"] == 50


def test_guidance_needs_one_prompt_per_image(extractor):
    with pytest.raises(ValueError, match="one prompt per image"):
        extractor(_images(), ["only one"], guidance_scale=4.0)


def _tiny_model(fusion: str, backbone_dir, guidance: float = 4.0):
    spec = MustafarSpec(
        backbone=str(backbone_dir),
        llm=LLM,
        clip=CLIP,
        tokenizer=TOKENIZER,
        fusion=fusion,
        guidance_scale=guidance,
        image_size=(64, 64),
        cross_attention_heads=2,
    )
    return spec, *build(spec)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_generate_runs_end_to_end_with_every_fusion(fusion, tiny_backbone_dir):
    torch.manual_seed(0)
    _, model, processor = _tiny_model(fusion, tiny_backbone_dir)
    questions = ["how many spheres are there?", "what colour is the box?"]
    inputs = processor(questions)
    expected = {"sd": 4, "clip": 4, "concat": 8, "cross_attention": 4}[fusion]
    assert model.config.image_seq_length == processor.image_seq_length == expected
    assert (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist() == [expected] * 2
    out = model.generate(
        **inputs,
        pixel_values=_images(),
        encoder_prompts=questions,
        max_new_tokens=3,
        do_sample=False,
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    train = processor(questions, ["two", "red"], padding_side="right")
    loss = model(**train, pixel_values=_images(), encoder_prompts=questions).loss
    assert torch.isfinite(loss)
    loss.backward()  # gradients reach the projector through transformers' masked scatter
    projector = model.model.vision_tower.trainable_modules()[0]
    assert next(projector.parameters()).grad is not None


def test_prompt_format_is_llava_15(tiny_backbone_dir):
    _, model, processor = _tiny_model("sd", tiny_backbone_dir)
    assert processor.prompt("what colour is the box?") == "USER: <image>\nwhat colour is the box? ASSISTANT:"
    labels = processor(["what colour is the box?"], ["red"])["labels"][0]
    ids = processor.tokenizer(" red", add_special_tokens=False)["input_ids"]
    assert labels[labels != -100].tolist() == ids + [processor.tokenizer.eos_token_id]


def test_image_token_feature_mismatch_is_a_clear_error(tiny_backbone_dir):
    _, model, processor = _tiny_model("sd", tiny_backbone_dir)
    inputs = processor(["how many spheres are there?"])
    ids = inputs["input_ids"].clone()
    ids[0, (ids[0] == model.config.image_token_id).nonzero()[0]] = processor.tokenizer.pad_token_id
    with pytest.raises(
        ValueError, match=rf"do not match.*1 images x 4 tokens.*\[3\] image tokens.*{IMAGE_TOKEN}"
    ):
        model(
            input_ids=ids,
            attention_mask=inputs["attention_mask"],
            pixel_values=_images(1),
            encoder_prompts=["how many spheres are there?"],
        )


def test_stage2_export_reloads_and_answers_identically(tiny_backbone_dir, tmp_path):
    from zoo.models.mustafar.module import MustafarModule

    torch.manual_seed(0)
    module = MustafarModule(
        backbone=str(tiny_backbone_dir),
        llm=LLM,
        clip=CLIP,
        tokenizer=TOKENIZER,
        fusion="cross_attention",
        guidance_scale=4.0,
        image_size=(64, 64),
        cross_attention_heads=2,
        max_new_tokens=3,
    )
    with torch.no_grad():  # move the zero-initialised fusion off zero so the SD path matters
        for parameter in module.encoder.cross_attention.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    module.eval()
    images, questions = _images(), ["how many spheres are there?", "what colour is the box?"]
    before = module.answer(images, questions, questions)
    logits = module.model(
        **module.processor(questions), pixel_values=images, encoder_prompts=questions
    ).logits
    module.export_pretrained(tmp_path / "export")
    model, processor, spec, extra = load_exported(tmp_path / "export")
    assert spec.fusion == "cross_attention" and extra["max_new_tokens"] == 3
    again = model(**processor(questions), pixel_values=images, encoder_prompts=questions).logits
    torch.testing.assert_close(again, logits, atol=0, rtol=0)

    import zoo

    predictor = zoo.load(str(tmp_path / "export"))
    out = predictor(list(images), questions, return_tokens=True)
    assert out.answers == before
    assert out.tokens["sd"].shape == (2, 4, 64) and out.tokens["clip"].shape == (2, 4, 32)
    with pytest.raises(ValueError, match="question 1 is empty"):
        predictor(list(images), ["fine", " "])

    # A question file over a folder: the same answers, and a rerun asks nothing again.
    import json

    from PIL import Image

    from zoo.inference.vqa_files import answer_question_file

    for i, image in enumerate(images):
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    questions_file = tmp_path / "questions.json"
    questions_file.write_text(
        json.dumps([{"image": f"{i}.png", "question": q} for i, q in enumerate(questions)])
    )
    written = answer_question_file(predictor, questions_file, tmp_path, tmp_path / "answers.json")
    from_files = predictor([tmp_path / "0.png", tmp_path / "1.png"], questions).answers
    assert [r["answer"] for r in written] == from_files
    calls = []
    answer_question_file(lambda *a, **k: calls.append(a), questions_file, tmp_path, tmp_path / "answers.json")
    assert calls == [] and json.loads((tmp_path / "answers.json").read_text()) == written

    # A stage chained from this export (its spec then names the export's clip/) still carries its own tower.
    chained = MustafarModule(
        backbone=str(tiny_backbone_dir),
        llm=LLM,
        clip=CLIP,
        tokenizer=TOKENIZER,
        fusion="cross_attention",
        image_size=(64, 64),
        cross_attention_heads=2,
        init_from=str(tmp_path / "export"),
    )
    chained.export_pretrained(tmp_path / "chained")
    record = json.loads((tmp_path / "chained" / "zoo_model.json").read_text())
    assert record["clip"] == "clip" and (tmp_path / "chained" / "clip" / "config.json").is_file()


def test_missing_real_parts_say_what_to_download(tmp_path, tiny_backbone_dir):
    from zoo.backbones import MissingWeightsError

    spec = MustafarSpec(backbone=str(tiny_backbone_dir), llm=str(tmp_path / "vicuna-7b-v1.5"))
    with pytest.raises(MissingWeightsError, match="lmsys/vicuna-7b-v1.5"):
        build(spec)


def test_benchmark_dry_run_prints_both_tables(capsys):
    from zoo.benchmarks import mustafar

    results = mustafar.run(dry_run=True)
    printed = capsys.readouterr().out
    assert "s = 4 (uncond + cond, one batched call)" in printed and "256 x 1280" in printed
    assert results["tokens_per_image"] == 4 and results["images_per_s_s4"] > 0


def test_lora_trains_adapters_only_and_exports_a_merged_llm(tiny_backbone_dir, tmp_path):
    pytest.importorskip("peft")
    from zoo.models.mustafar.module import MustafarModule

    torch.manual_seed(0)
    module = MustafarModule(
        backbone=str(tiny_backbone_dir),
        llm=LLM,
        tokenizer=TOKENIZER,
        fusion="sd",
        image_size=(64, 64),
        train_llm=False,
        lora_rank=4,
        max_new_tokens=2,
    )
    names = {id(p): n for n, p in module.named_parameters()}
    trained = [names[id(p)] for p in module.trainable_parameters()]
    assert trained and all("lora_" in n or "projector" in n for n in trained)
    assert any("lora_" in n for n in trained)
    with torch.no_grad():  # LoRA B starts at zero: make the adapters matter
        for name, parameter in module.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    module.eval()
    questions = ["how many spheres are there?"]
    logits = module.model(
        **module.processor(questions), pixel_values=_images(1), encoder_prompts=questions
    ).logits
    module.export_pretrained(tmp_path / "lora")
    model, processor, _, _ = load_exported(tmp_path / "lora")
    again = model(**processor(questions), pixel_values=_images(1), encoder_prompts=questions).logits
    torch.testing.assert_close(again, logits, atol=1e-5, rtol=1e-5)


def test_zoo_load_gives_the_tiny_feature_extractor():
    import zoo

    features = zoo.load("tiny-sd-features")
    tokens = features([_images(1)[0]], ["how many spheres are there?"])
    assert tokens.shape == (1, 4, 64) and features.extractor.guidance_scale == 4.0
    assert torch.equal(tokens, features([_images(1)[0]], ["how many spheres are there?"]))  # seeded noise


def test_stage2_starts_from_a_lightning_checkpoint_of_stage1(tiny_backbone_dir, tmp_path):
    from zoo.models.mustafar.module import MustafarModule

    settings = {
        "backbone": str(tiny_backbone_dir),
        "llm": LLM,
        "tokenizer": TOKENIZER,
        "fusion": "sd",
        "image_size": (64, 64),
    }
    torch.manual_seed(0)
    stage1 = MustafarModule(**settings, template="plain", sd_prompt="none", train_llm=False).eval()
    torch.save({"state_dict": stage1.state_dict()}, tmp_path / "last.ckpt")
    torch.manual_seed(1)  # a different random init, overwritten by the checkpoint
    stage2 = MustafarModule(**settings, init_from=str(tmp_path / "last.ckpt")).eval()
    questions = ["how many spheres are there?"]
    inputs = stage2.processor(questions)
    logits = [
        m.model(**inputs, pixel_values=_images(1), encoder_prompts=questions).logits for m in (stage1, stage2)
    ]
    torch.testing.assert_close(logits[1], logits[0], atol=0, rtol=0)


def test_train_tiny_chains_the_registry_stages(tmp_path, monkeypatch):
    """tools/train_tiny.py --all trains tiny-mustafar's stage 1, then stage 2 from stage 1's export."""
    import importlib.util
    import json

    import zoo.cli
    from zoo.registry import REPO_ROOT, get_entry

    spec = importlib.util.spec_from_file_location("tool_train_tiny", REPO_ROOT / "tools" / "train_tiny.py")
    train_tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_tiny)

    calls = []

    def fake(config, out, overrides=None):
        calls.append((config, str(out), list(overrides or [])))
        Path(out).mkdir(parents=True, exist_ok=True)
        return {"config": config, "train_and_test_seconds": 1.5, "metrics": {"accuracy": len(calls) / 10}}

    monkeypatch.setattr(zoo.cli, "train_evaluate_export", fake)
    entry = get_entry("tiny-mustafar")
    assert entry.stages == ("configs/tiny/mustafar_stage1.yaml",) and entry.rebuild == "train_tiny"
    out = tmp_path / "mustafar"
    record = zoo.cli.train_stages([*entry.stages, entry.config], out, ["--trainer.max_steps", "2"], tmp_path)
    stage1 = tmp_path / "mustafar_stage1"
    assert calls == [
        ("configs/tiny/mustafar_stage1.yaml", str(stage1), ["--trainer.max_steps", "2"]),
        (
            "configs/tiny/mustafar_stage2.yaml",
            str(out),
            ["--trainer.max_steps", "2", "--model.init_args.init_from", stage1.as_posix()],
        ),
    ]
    assert record["stages"][0]["config"] == "configs/tiny/mustafar_stage1.yaml"
    assert record["total_seconds"] == 3.0 and record["metrics"] == {"accuracy": 0.2}
    assert json.loads((out / "recipe.json").read_text())["command"] == (
        "python tools/train_tiny.py configs/tiny/mustafar_stage1.yaml configs/tiny/mustafar_stage2.yaml "
        f"--out {out.as_posix()}"
    )
    # The stage-2 config's own init_from is where the chain puts stage 1.
    recipe = yaml.safe_load(Path("configs/tiny/mustafar_stage2.yaml").read_text())
    assert recipe["model"]["init_args"]["init_from"] == f"{zoo.cli.STAGE_ROOT}/mustafar_stage1"
    # One config is the plain single-stage run, as before.
    calls.clear()
    train_tiny.main(["configs/tiny/lotus_depth_d.yaml", "--out", str(tmp_path / "lotus")])
    assert calls == [("configs/tiny/lotus_depth_d.yaml", str(tmp_path / "lotus"), [])]


def test_tiny_mustafar_answers_held_out_questions_above_the_majority_baseline():
    """zoo.load("tiny-mustafar") generates answers end to end, and they beat every answer-only baseline."""
    import json

    import zoo
    from zoo.data.vqa import synthetic_records
    from zoo.evaluation.vqa import normalize_answer
    from zoo.registry import REPO_ROOT

    folder = REPO_ROOT / "checkpoints/tiny/mustafar"
    record = json.loads((folder / "zoo_model.json").read_text())
    # Self-contained but for the base: the LLM, CLIP tower and tokenizer are its own, the backbone referenced.
    assert all((folder / record[part]).is_dir() for part in ("llm", "clip", "tokenizer")), record
    assert record["backbone"] == "checkpoints/tiny/backbone"
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 10 * 2**20
    metrics = json.loads((folder / "metrics.json").read_text())
    margin = metrics["accuracy"] - metrics["majority_accuracy"]  # on all 256 held-out test images
    assert margin > 0.02, metrics
    predictor = zoo.load("tiny-mustafar")
    pixels, items = synthetic_records(SHIPPED_TEST_IMAGES, "test", (64, 64), None)  # rendered afresh
    answers = predictor(
        [pixels[item["image"]] for item in items], [item["question"] for item in items], batch_size=64
    ).answers
    assert len(answers) == len(items) and all(isinstance(a, str) for a in answers)
    truth = [normalize_answer(item["answer"]) for item in items]
    right = [normalize_answer(a) == t for a, t in zip(answers, truth, strict=True)]
    accuracy = sum(right) / len(right)
    # The strongest answer-only baseline on these very questions: each type's most frequent answer here
    # (at least the training-set majority baseline of metrics.json).
    by_type: dict[str, dict[str, int]] = {}
    for item in items:
        counts = by_type.setdefault(item["question_type"], {})
        counts[item["answer"]] = counts.get(item["answer"], 0) + 1
    oracle = sum(max(counts.values()) for counts in by_type.values()) / len(items)
    assert accuracy - oracle > margin / 2, (accuracy, oracle, margin)
    # Batched generation answers as one question at a time does.
    single = [predictor([pixels[items[i]["image"]]], [items[i]["question"]]).answers[0] for i in range(6)]
    assert single == answers[:6]


def test_predictors_decode_batch_by_batch(monkeypatch):
    """Memory follows batch_size: images are decoded per batch, and a bad one is named by its index."""
    import numpy as np

    import zoo
    import zoo.inference.mustafar as mustafar

    decoded: list[int] = []
    real = mustafar._pixels

    def counting(images, size, first=0):
        decoded.append(len(images))
        return real(images, size, first)

    monkeypatch.setattr(mustafar, "_pixels", counting)
    predictor = zoo.load("tiny-mustafar")
    images = [np.full((40, 48, 3), 0.1 * k, np.float32) for k in range(7)]
    answers = predictor(images, ["what colour is the box?"] * 7, batch_size=3).answers
    assert len(answers) == 7 and decoded == [3, 3, 1]
    with pytest.raises(ValueError, match="image 4"):
        empty = np.zeros((0, 5, 3), np.float32)
        predictor([*images[:4], empty], ["how many boxes are there?"] * 5, batch_size=2)
