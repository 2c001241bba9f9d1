"""Benchmark: Lotus predictor overhead over its bare calls, vs diffusers' Marigold, and training memory."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable

import torch

from zoo.backbones import StableDiffusionBackbone
from zoo.backbones.tiny import load_tiny_backbone, tiny_backbone_path
from zoo.benchmarks.timing import best_of
from zoo.inference.lotus import LotusPredictor


def _marigold_pipeline(backbone: StableDiffusionBackbone):
    """diffusers' MarigoldDepthPipeline on a UNet of the same size (8 input channels, no task switcher)."""
    from diffusers import DDIMScheduler, MarigoldDepthPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    config = dict(backbone.unet.config)
    config.update(in_channels=8, class_embed_type=None, projection_class_embeddings_input_dim=None)
    unet = UNet2DConditionModel.from_config(config).eval()
    path = tiny_backbone_path()
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
        prediction_type="v_prediction",
    )
    pipeline = MarigoldDepthPipeline(
        unet=unet,
        vae=backbone.vae,
        scheduler=scheduler,
        text_encoder=CLIPTextModel.from_pretrained(path / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(path / "tokenizer"),
        prediction_type="depth",
        default_denoising_steps=4,
        default_processing_resolution=0,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def tiny_lotus_backbone() -> StableDiffusionBackbone:
    """The committed tiny backbone with the task switcher Lotus adds (its UNet, like SD2's, has none)."""
    return load_tiny_backbone(with_task_switcher=True)


def training_step_peak_kib(
    gradient_checkpointing: bool,
    size: int,
    batch: int,
    build: Callable[[], StableDiffusionBackbone] | None = None,
    in_process: bool = False,
) -> int:
    """Peak resident memory growth (KiB) of one Lotus-D training step, run in a fresh process.

    `build` makes the backbone there (a module-level function or partial, so it pickles): the committed tiny
    backbone with the task switcher by default. `in_process` runs it here instead (dry runs: no start-up).
    """
    build = build or tiny_lotus_backbone
    if in_process:
        return _measure_training_step(gradient_checkpointing, size, batch, build)
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_measure_training_step, (gradient_checkpointing, size, batch, build))


def _status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _measure_training_step(
    gradient_checkpointing: bool, size: int, batch: int, build: Callable[[], StableDiffusionBackbone]
) -> int:
    torch.set_num_threads(1)
    backbone = build()
    backbone.configure(gradient_checkpointing=gradient_checkpointing).train()
    from zoo.models.lotus.model import Lotus

    model = Lotus(backbone, "d", "depth")
    latents = backbone.encode(torch.rand(batch, 3, size, size) * 2 - 1)
    # Reset the peak-RSS mark (Linux: "5" to clear_refs) so loading the model cannot hide the step's peak.
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = _status_kib("VmRSS")
    losses = model.training_losses(latents, latents.flip(-1), torch.ones_like(latents, dtype=torch.bool))
    losses["loss"].backward()
    return _status_kib("VmHWM") - before


def run(
    size: int = 128, batch: int = 4, repeats: int = 5, threads: int = 1, dry_run: bool = False
) -> dict[str, float]:
    """Print the Lotus benchmark tables (all timings side by side in this one run) and return the numbers.

    dry_run: 16x16, one image, one repeat, memory measured in this process (a test's smoke run).
    """
    if dry_run:
        size, batch, repeats = 16, 1, 1
    torch.set_num_threads(threads)
    backbone = tiny_lotus_backbone().eval()
    predictor = LotusPredictor(backbone, "d", "depth")
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))

    @torch.no_grad()
    def bare() -> torch.Tensor:
        latents = backbone.encode(images * 2 - 1)
        prediction = backbone.unet_forward(latents)
        return backbone.decode(prediction)

    timings = {
        "bare VAE encode + 1 UNet + VAE decode": best_of(bare, repeats),
        "LotusPredictor (D, default mode)": best_of(
            lambda: predictor(images, processing_resolution=0, batch_size=batch), repeats
        ),
    }
    marigold = _marigold_pipeline(backbone)
    timings["diffusers Marigold v1-1 default (4 steps, ensemble 1)"] = best_of(
        lambda: marigold(
            list(images),
            num_inference_steps=4,
            ensemble_size=1,
            processing_resolution=0,
            batch_size=batch,
            output_type="pt",
        ),
        repeats,
    )
    timings["diffusers Marigold paper setting (4 steps, ensemble 10)"] = best_of(
        lambda: marigold(
            list(images),
            num_inference_steps=4,
            ensemble_size=10,
            processing_resolution=0,
            batch_size=batch,
            output_type="pt",
        ),
        max(1, repeats // 2),
    )
    base = timings["bare VAE encode + 1 UNet + VAE decode"]
    print(
        f"\nLotus inference, tiny backbone, {batch} images of {size}x{size}, CPU, {threads} thread(s), "
        f"best of {repeats}\n"
    )
    print("| method | seconds | ratio to bare calls |\n| --- | ---: | ---: |")
    for name, seconds in timings.items():
        print(f"| {name} | {seconds:.4f} | {seconds / base:.2f}x |")
    overhead = timings["LotusPredictor (D, default mode)"] / base - 1
    print(f"\npredictor overhead over bare calls: {100 * overhead:.1f}% (target <= 10%)")

    memory = {
        flag: training_step_peak_kib(flag, 4 * size, 2 * batch, in_process=dry_run) for flag in (False, True)
    }
    print(f"\n| training step (Lotus-D, joint batch, {2 * batch} x {4 * size}^2) | peak RSS growth MiB |")
    print("| --- | ---: |")
    for flag, kib in memory.items():
        print(f"| gradient checkpointing {'on' if flag else 'off'} | {kib / 1024:.1f} |")
    results = {name: seconds for name, seconds in timings.items()}
    results["predictor_overhead"] = overhead
    results["peak_mib_no_checkpointing"] = memory[False] / 1024
    results["peak_mib_checkpointing"] = memory[True] / 1024
    return results
