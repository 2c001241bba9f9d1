"""SD2-size benchmarks on random weights: cost split, Lotus vs bare calls and diffusers Marigold, the fast
autoencoder, SDPose persons/s and training memory.

Compute cost does not need trained weights: the SD2-base UNet, VAE and text encoder are built from their
published configs (zoo/backbones/configs/sd2_base) with random weights; nothing is downloaded. A dry run
builds the same architectures at a tiny width and runs every measurement once, so a test keeps this module
from rotting.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from zoo.backbones import StableDiffusionBackbone, widen_conv_in
from zoo.backbones.autoencoder_tiny import CONFIG_DIR, taesd_from_config
from zoo.backbones.stable_diffusion import encode_prompts
from zoo.backbones.task_switcher import TASK_CODE_DIM
from zoo.benchmarks.timing import InsideTimer, PairedTimes, best_of, interleaved_pairs
from zoo.utils.threads import pinned_threads

if TYPE_CHECKING:
    from zoo.inference.pose import PosePredictor

SD2_DIR = CONFIG_DIR / "sd2_base"

# Dry runs: the same block layouts at a tiny width (SD2's heads, 8 channels each), so a test runs in seconds.
DRY_OVERRIDES: dict[str, dict[str, Any]] = {
    "unet": {
        "block_out_channels": [40, 80, 160, 160],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "cross_attention_dim": 32,
    },
    "vae": {"block_out_channels": [16, 16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8},
    "text_encoder": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    },
    "taesd": {"encoder_block_out_channels": [16] * 4, "decoder_block_out_channels": [16] * 4},
}

# Lotus and SDPose add the 4-d task-switcher projection to SD2's UNet.
TASK_SWITCHER = {"class_embed_type": "projection", "projection_class_embeddings_input_dim": TASK_CODE_DIM}

# Marigold's published settings: (denoising steps, ensemble size).
MARIGOLD_SETTINGS = {
    "v1-1 default": (4, 1),
    "v1-1 depth evaluation": (1, 10),
    "v1-1 normals evaluation": (4, 10),
    "v1-0 paper setting": (50, 10),
}


def load_config(name: str, dry_run: bool = False) -> dict[str, Any]:
    """A shipped SD2-base component config (unet, vae, text_encoder) without its provenance keys."""
    config = json.loads((SD2_DIR / f"{name}.json").read_text())
    config = {key: value for key, value in config.items() if not key.startswith("_")}
    return {**config, **(DRY_OVERRIDES[name] if dry_run else {})}


def _sharing_unet(source: UNet2DConditionModel, config: dict[str, Any]) -> UNet2DConditionModel:
    """A UNet of `config` whose parameters are `source`'s tensors where names and shapes agree (no copy).

    Lotus-G and Marigold differ from Lotus-D only in conv_in and the class embedding: sharing the rest keeps
    three SD2 UNets within the memory of one on a 24 GB machine.
    """
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    own = unet.state_dict()
    shared = {
        name: tensor
        for name, tensor in source.state_dict().items()
        if name in own and own[name].shape == tensor.shape
    }
    unet.load_state_dict(shared, strict=False, assign=True)
    if unet.conv_in.weight.is_meta:
        unet.conv_in = widen_conv_in(source.conv_in, config["in_channels"])
    left = [name for name, tensor in unet.state_dict().items() if tensor.is_meta]
    if left:
        raise RuntimeError(f"UNet parameters without a shared source: {left}")
    return unet.eval()


@dataclass
class SD2Parts:
    """Random-weight SD2-base parts; the three UNets share all tensors but conv_in and the class embedding."""

    vae: AutoencoderKL
    unet_d: UNet2DConditionModel  # 4 input channels + task switcher (Lotus-D, SDPose)
    unet_g: UNet2DConditionModel  # 8 input channels + task switcher (Lotus-G)
    unet_marigold: UNet2DConditionModel  # 8 input channels, no class embedding (Marigold)
    text_encoder: CLIPTextModel
    tokenizer: Any
    taesd: AutoencoderTiny
    empty_prompt_embeds: torch.Tensor  # [1, 2, D]
    text_seconds: float

    def backbone(self, unet: UNet2DConditionModel) -> StableDiffusionBackbone:
        """A backbone over the shared VAE and `unet`."""
        return StableDiffusionBackbone(self.vae, unet, self.empty_prompt_embeds).eval()


def build_sd2(dry_run: bool = False, seed: int = 0) -> SD2Parts:
    """Build the SD2-base VAE, UNets, text encoder and TAESD from the shipped configs with random weights."""
    from zoo.backbones.tiny import tiny_tokenizer

    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(load_config("vae", dry_run)).eval()
    config = load_config("unet", dry_run)
    unet_d = UNet2DConditionModel.from_config({**config, **TASK_SWITCHER}).eval()
    unet_g = _sharing_unet(unet_d, {**config, **TASK_SWITCHER, "in_channels": 8})
    unet_marigold = _sharing_unet(unet_g, {**config, "in_channels": 8})
    text_encoder = CLIPTextModel(CLIPTextConfig(**load_config("text_encoder", dry_run))).eval()
    # Any tokenizer whose ids fit the vocabulary costs the same; the local one needs no download.
    tokenizer = tiny_tokenizer()
    start = time.perf_counter()
    empty = encode_prompts(text_encoder, tokenizer, [""], pad=False)  # [1, 2, D]
    text_seconds = time.perf_counter() - start
    taesd = taesd_from_config(**(DRY_OVERRIDES["taesd"] if dry_run else {})).eval()
    return SD2Parts(vae, unet_d, unet_g, unet_marigold, text_encoder, tokenizer, taesd, empty, text_seconds)


def sd2_backbone(dry_run: bool = False, seed: int = 0) -> StableDiffusionBackbone:
    """What a Lotus-D training step needs: the SD2 VAE and UNet with the task switcher (random weights)."""
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(load_config("vae", dry_run)).eval()
    config = load_config("unet", dry_run)
    unet = UNet2DConditionModel.from_config({**config, **TASK_SWITCHER})
    # The prompt embedding's values do not change the cost; its shape is SD2's empty prompt, [1, 2, 1024].
    return StableDiffusionBackbone(vae, unet, torch.zeros(1, 2, config["cross_attention_dim"]))


def marigold_pipelines(parts: SD2Parts) -> dict[str, Any]:
    """diffusers' MarigoldDepthPipeline and MarigoldNormalsPipeline on the shared SD2 parts (v1-1 DDIM)."""
    from diffusers import MarigoldDepthPipeline, MarigoldNormalsPipeline

    def scheduler() -> DDIMScheduler:
        return DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing="trailing",
            prediction_type="v_prediction",
        )

    common = {
        "unet": parts.unet_marigold,
        "vae": parts.vae,
        "text_encoder": parts.text_encoder,
        "tokenizer": parts.tokenizer,
        "default_denoising_steps": 4,
        "default_processing_resolution": 768,
    }
    pipelines = {
        "depth": MarigoldDepthPipeline(scheduler=scheduler(), prediction_type="depth", **common),
        "normals": MarigoldNormalsPipeline(scheduler=scheduler(), prediction_type="normals", **common),
    }
    for pipeline in pipelines.values():
        pipeline.set_progress_bar_config(disable=True)
        # Lotus ships its empty-prompt embedding; give Marigold the same one so neither pays the text encoder.
        pipeline.empty_text_embedding = parts.empty_prompt_embeds
    return pipelines


def sdpose_predictor(parts: SD2Parts, crop: tuple[int, int], device: str = "cpu") -> PosePredictor:
    """A top-down PosePredictor on the SD2 UNet (up_blocks.3, 320 channels) with a random COCO-17 head."""
    from zoo.inference.pose import PosePredictor
    from zoo.models.sdpose.model import SDPose

    width, height = crop
    model = SDPose(parts.backbone(parts.unet_d), 17, "up_blocks.3")
    config = {
        "family": "sdpose",
        "metainfo": "coco",
        "num_keypoints": 17,
        "feature_site": "up_blocks.3",
        "input_size": [width, height],
        "heatmap_size": [width // 4, height // 4],
        "sigma": 6.0,
        "blur_kernel_size": 11,
        "timestep": 999,
    }
    return PosePredictor(model, config, device)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(headers) - 1)) + " |",
    ]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def run(
    resolution: int = 512,
    threads: int = 2,
    pose_crop: tuple[int, int] = (768, 1024),
    train_resolution: int = 256,
    train_batch: int = 1,
    dry_run: bool = False,
    out: str | Path | None = None,
    pairs: int = 3,
    only: str | None = None,
) -> dict[str, float]:
    """Measure and print every SD2-size table of one run; write them to `out` (Markdown) when given.

    Every call at SD2 size is timed once after the cost split has run its shapes (a second call of tens of
    seconds changes nothing but the run time); ensemble settings are composed from measured calls. The
    predictors are timed against their bare calls in `pairs` interleaved pairs (see predictor_ratios).
    only="ratio" runs the predictor-vs-bare-calls section alone (a few minutes instead of the whole run).
    """
    if only not in (None, "ratio"):
        raise ValueError(f"only must be None or 'ratio'; got {only!r}")
    if dry_run:
        resolution, pose_crop, train_resolution, threads, pairs = 64, (48, 64), 32, 1, 2
    with pinned_threads(threads):
        if only == "ratio":
            return _run_ratio(resolution, threads, pairs, dry_run, out)
        return _run(resolution, threads, pose_crop, train_resolution, train_batch, dry_run, out, pairs)


def _test_images(resolution: int) -> torch.Tensor:
    """One random image [1, 3, R, R] in [0, 1] (cost does not depend on content)."""
    return torch.rand(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))


@dataclass
class PredictorTimes:
    """A predictor timed against its bare calls, and what each of its calls spent inside the VAE and UNet."""

    paired: PairedTimes  # predictor calls (a) and bare calls (b), interleaved
    model_seconds: list[float]  # per predictor call: seconds inside VAE encode/decode and the UNet forward

    @property
    def in_call_ratios(self) -> list[float]:
        """Each predictor call over its own time inside the model calls: its overhead, free of load drift."""
        return [call / inside for call, inside in zip(self.paired.a, self.model_seconds, strict=True)]

    @property
    def own_seconds(self) -> list[float]:
        """Each predictor call's time outside the model calls (inputs, padding, noise, post-processing)."""
        return [call - inside for call, inside in zip(self.paired.a, self.model_seconds, strict=True)]


def predictor_ratios(
    parts: SD2Parts, images: torch.Tensor, resolution: int, pairs: int
) -> dict[str, PredictorTimes]:
    """LotusPredictor D and G (1 step) against their bare calls, timed in interleaved pairs.

    The bare call is VAE encode -> UNet -> VAE decode on the prepared [-1, 1] pixels (and, for G, a prepared
    noise latent): what a call cannot avoid. The predictor gets the [0, 1] image and does everything else
    (input decoding, scaling, padding, noise, post-processing). Each predictor call is paired with a bare
    call back to back, the order alternating (A B, B A, ...), so both members of a pair see nearly the same
    load on a shared machine; the ratios are per pair (median) and of each side's fastest call (min-based).
    Each predictor call also records its time inside the VAE and UNet calls, so its own overhead is measured
    within the call (in-call ratio). One bare Lotus-G call runs first so that no timed call pays for new
    shapes (it runs every shape of both modes but the 4-channel conv_in's).
    """
    from zoo.inference.lotus import LotusPredictor

    backbone_d, backbone_g = parts.backbone(parts.unet_d), parts.backbone(parts.unet_g)
    pixels = images * 2 - 1
    with torch.no_grad():
        latents = backbone_d.encode(pixels)  # [1, 4, R/8, R/8]
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))

    @torch.no_grad()
    def bare_d() -> torch.Tensor:
        return backbone_d.decode(backbone_d.unet_forward(backbone_d.encode(pixels)))

    @torch.no_grad()
    def bare_g() -> torch.Tensor:
        return backbone_g.decode(backbone_g.unet_forward(torch.cat([backbone_g.encode(pixels), noise], 1)))

    lotus_d, lotus_g = LotusPredictor(backbone_d, "d", "depth"), LotusPredictor(backbone_g, "g", "depth")
    call = {"processing_resolution": resolution, "output_type": "pt"}
    inside = InsideTimer(
        [(parts.vae, "encode"), (parts.vae, "decode"), (parts.unet_d, "forward"), (parts.unet_g, "forward")]
    )
    model_seconds: dict[str, list[float]] = {"d": [], "g": []}

    def recorded(key: str, predictor: Callable[[], object]) -> Callable[[], None]:
        def run_predictor() -> None:
            before = inside.seconds
            predictor()
            model_seconds[key].append(inside.seconds - before)

        return run_predictor

    predictors = {
        "d": (lambda: lotus_d(images, **call), bare_d),
        "g": (lambda: lotus_g(images, generator=torch.Generator().manual_seed(0), **call), bare_g),
    }
    with inside:
        bare_g()  # warm-up: the shapes the predictors run
        paired = {
            key: interleaved_pairs(recorded(key, predictor), bare, pairs)
            for key, (predictor, bare) in predictors.items()
        }
    return {key: PredictorTimes(paired[key], model_seconds[key]) for key in predictors}


def _run_ratio(
    resolution: int, threads: int, pairs: int, dry_run: bool, out: str | Path | None
) -> dict[str, float]:
    """The predictor-vs-bare-calls section alone."""
    started = time.perf_counter()
    load_before = _load_average()
    parts = build_sd2(dry_run)
    ratios = predictor_ratios(parts, _test_images(resolution), resolution, pairs)
    wall = time.perf_counter() - started
    text = (
        f"{_header(resolution, threads)}; run {wall / 60:.1f} min; {_load_note(load_before)}\n\n"
        + _ratio_section(ratios)
    )
    _emit(text, out)
    return _ratio_results(ratios)


def _run(
    resolution: int,
    threads: int,
    pose_crop: tuple[int, int],
    train_resolution: int,
    train_batch: int,
    dry_run: bool,
    out: str | Path | None,
    pairs: int,
) -> dict[str, float]:
    from zoo.benchmarks.lotus import training_step_peak_kib
    from zoo.inference.lotus import LotusPredictor

    started = time.perf_counter()
    load_before = _load_average()
    # First, while this process holds no model: each step runs in a fresh process with its own SD2 UNet.
    memory = {
        flag: training_step_peak_kib(
            flag, train_resolution, train_batch, functools.partial(sd2_backbone, dry_run), in_process=dry_run
        )
        for flag in (False, True)
    }
    parts = build_sd2(dry_run)
    backbone_d = parts.backbone(parts.unet_d)
    images = _test_images(resolution)  # [1, 3, R, R] in [0, 1]
    pixels = images * 2 - 1
    latents = backbone_d.encode(pixels)  # [1, 4, R/8, R/8]

    def once(fn: Callable[[], object]) -> float:
        """One timed call; its shapes have run before."""
        return best_of(fn, 1, warmup=False)

    with torch.no_grad():
        # Best of two for the split: the first call also runs each shape for the single-call timings below.
        split = {
            "VAE encode": best_of(lambda: backbone_d.encode(pixels), 1),
            "UNet (4 channels, Lotus-D)": best_of(lambda: backbone_d.unet_forward(latents), 1),
            "VAE decode": best_of(lambda: backbone_d.decode(latents), 1),
        }
        taesd_encode = best_of(lambda: parts.taesd.encode(pixels), 1)
        taesd_decode = best_of(lambda: parts.taesd.decode(latents), 1)
    ratios = predictor_ratios(parts, images, resolution, pairs)
    predictor_d = min(ratios["d"].paired.a)  # the least disturbed predictor call: the tables' unit
    lotus_d = LotusPredictor(backbone_d, "d", "depth")
    call = {"processing_resolution": resolution, "output_type": "pt"}
    fast = {}
    for mode in ("tiny-decode", "tiny"):
        backbone_d.use_tiny_autoencoder(parts.taesd, mode)
        fast[mode] = once(lambda: lotus_d(images, **call))
    backbone_d.use_tiny_autoencoder(None, "full")

    pipelines = marigold_pipelines(parts)
    marigold: dict[str, dict[str, float]] = {}
    for task, pipeline in pipelines.items():
        steps, ensemble = MARIGOLD_SETTINGS["v1-1 default"]
        measured = once(
            lambda pipeline=pipeline, steps=steps, ensemble=ensemble: pipeline(
                images,
                num_inference_steps=steps,
                ensemble_size=ensemble,
                processing_resolution=resolution,
                output_type="pt",
            )
        )
        # Per denoising step: the measured call less its one encode and one decode, over its steps.
        step = (measured - split["VAE encode"] - split["VAE decode"]) / steps
        marigold[task] = {
            "measured 4x1": measured,
            "step": step,
            "ensembling": _ensembling_seconds(pipeline, task, resolution, 10),
        }

    pose = sdpose_predictor(parts, pose_crop)
    # Cost does not depend on content: one random image at half the crop size, its whole extent as the box.
    photo = (np.random.default_rng(0).random((pose_crop[1] // 2, pose_crop[0] // 2, 3)) * 255).astype(
        np.uint8
    )
    box = [np.array([[0, 0, photo.shape[1] - 1, photo.shape[0] - 1]], dtype=np.float32)]
    pose_seconds = {}
    for flip in (False, True):
        pose_seconds[flip] = once(lambda flip=flip: pose([photo], boxes=box, flip_test=flip))

    measured = SD2Measurements(
        resolution,
        threads,
        pose_crop,
        train_resolution,
        train_batch,
        split,
        ratios,
        predictor_d,
        taesd_encode,
        taesd_decode,
        fast,
        marigold,
        pose_seconds,
        memory,
        time.perf_counter() - started,
        load_before,
    )
    return _report(parts, measured, out)


def _load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _load_note(before: float | None) -> str:
    """The load averages at the start and the end of a run: how shared the machine was."""
    after = _load_average()
    if before is None or after is None:
        return "load average unknown"
    return f"1-min load average {before:.1f} at the start, {after:.1f} at the end ({os.cpu_count()} CPUs)"


def _ratio_section(ratios: dict[str, PredictorTimes]) -> str:
    """The predictor-vs-bare-calls table of interleaved pairs, with each predictor call's in-call overhead."""
    names = {
        "d": ("LotusPredictor D", "VAE encode + UNet + VAE decode"),
        "g": ("LotusPredictor G (1 step)", "VAE encode + UNet (8 channels) + VAE decode"),
    }
    rows = []
    for key, times in ratios.items():
        predictor, bare = names[key]
        paired, pair_ratios = times.paired, times.paired.pair_ratios
        rows.append(
            [
                f"{predictor} / bare {bare}",
                str(len(pair_ratios)),
                f"{min(paired.a):.2f} ({max(paired.a):.2f})",
                f"{min(paired.b):.2f} ({max(paired.b):.2f})",
                f"{paired.median_ratio:.3f}x",
                f"{paired.min_ratio:.3f}x",
                f"{min(pair_ratios):.3f}-{max(pair_ratios):.3f}",
                f"{statistics.median(times.in_call_ratios):.4f}x ({max(times.in_call_ratios):.4f}x)",
                f"{1000 * statistics.median(times.own_seconds):.0f}",
            ]
        )
    every = [seconds for times in ratios.values() for seconds in times.paired.a + times.paired.b]
    return (
        "Lotus predictors vs their bare calls (goal <= 1.05x), interleaved pairs (A B, B A, ...)\n\n"
        + _table(
            [
                "predictor / bare calls",
                "pairs",
                "predictor min (max) s",
                "bare min (max) s",
                "median of pair ratios",
                "min-based ratio",
                "pair ratios",
                "in-call ratio, median (max)",
                "predictor's own ms, median",
            ],
            rows,
        )
        + f"\nSingle calls in this section took {min(every):.2f}-{max(every):.2f} s: the spread is the "
        "machine's load, which both members of a pair share. In-call ratio: each predictor call over its own "
        "time inside the VAE and UNet calls, measured within the call (free of load drift between calls); "
        "own ms: the call's time outside them.\n"
    )


def _ratio_results(ratios: dict[str, PredictorTimes]) -> dict[str, float]:
    results = {}
    for key, times in ratios.items():
        results[f"predictor_{key}_s"] = min(times.paired.a)
        results[f"bare_{key}_s"] = min(times.paired.b)
        results[f"predictor_{key}_ratio"] = times.paired.median_ratio
        results[f"predictor_{key}_ratio_min"] = times.paired.min_ratio
        results[f"predictor_{key}_ratio_in_call"] = statistics.median(times.in_call_ratios)
    return results


def _emit(text: str, out: str | Path | None) -> None:
    """Print the tables and write them to `out` when given."""
    print(text)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)


@dataclass
class SD2Measurements:
    """Everything one SD2-size run measured (seconds unless named otherwise) and its settings."""

    resolution: int
    threads: int
    pose_crop: tuple[int, int]
    train_resolution: int
    train_batch: int
    split: dict[str, float]  # VAE encode, UNet, VAE decode
    ratios: dict[str, PredictorTimes]  # per mode (d, g): predictor and bare calls, interleaved
    predictor_d: float  # the fastest LotusPredictor D call of the pairs
    taesd_encode: float
    taesd_decode: float
    fast: dict[str, float]  # LotusPredictor D per tiny mode
    marigold: dict[str, dict[str, float]]  # per task: measured 4x1, per-step cost, ensembling of 10
    pose_seconds: dict[bool, float]  # per flip test
    memory: dict[bool, int]  # peak RSS growth KiB per gradient checkpointing
    wall: float
    load_before: float | None  # 1-min load average at the start


def _ensembling_seconds(pipeline: Any, task: str, resolution: int, ensemble: int) -> float:
    """Marigold's test-time ensembling of `ensemble` predictions at the processing resolution, timed once."""
    generator = torch.Generator().manual_seed(0)
    if task == "depth":
        depth = torch.rand(ensemble, 1, resolution, resolution, generator=generator)  # [E, 1, R, R]
        return best_of(lambda: pipeline.ensemble_depth(depth), 1, warmup=False)
    normals = torch.nn.functional.normalize(
        torch.randn(ensemble, 3, resolution, resolution, generator=generator)
    )
    return best_of(lambda: pipeline.ensemble_normals(normals, output_uncertainty=False), 1, warmup=False)


def _composed(split: dict[str, float], marigold: dict[str, float], steps: int, ensemble: int) -> float:
    """Marigold seconds at (steps, ensemble): 1 encode, steps x ensemble UNet steps, E decodes, ensembling."""
    ensembling = marigold["ensembling"] * (ensemble > 1)
    return (
        split["VAE encode"]
        + steps * ensemble * marigold["step"]
        + ensemble * split["VAE decode"]
        + ensembling
    )


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else the platform's processor or machine."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _header(resolution: int, threads: int) -> str:
    return (
        f"SD2-base architecture (random weights), fp32, {resolution}x{resolution}, batch 1, CPU "
        f"{cpu_name()} x {os.cpu_count()}, {threads} torch thread(s), torch {torch.__version__}"
    )


def _report(parts: SD2Parts, m: SD2Measurements, out: str | Path | None) -> dict[str, float]:
    """Print the tables (and write them to `out`); return the numbers."""
    resolution, threads, pose_crop, train_resolution, train_batch = (
        m.resolution,
        m.threads,
        m.pose_crop,
        m.train_resolution,
        m.train_batch,
    )
    split, ratios, predictor_d = m.split, m.ratios, m.predictor_d
    taesd_encode, taesd_decode, fast, marigold, pose_seconds, memory, wall = (
        m.taesd_encode,
        m.taesd_decode,
        m.fast,
        m.marigold,
        m.pose_seconds,
        m.memory,
        m.wall,
    )
    lotus_call = predictor_d
    bare_d = sum(split.values())
    sections = [f"{_header(resolution, threads)}; run {wall / 60:.1f} min; {_load_note(m.load_before)}\n"]
    split_rows = [
        [name, f"{seconds:.2f}", f"{100 * seconds / bare_d:.0f}%"] for name, seconds in split.items()
    ]
    split_rows.append(
        ["text encoder, empty prompt (once, cached by Lotus and Marigold)", f"{parts.text_seconds:.2f}", "-"]
    )
    sections.append(
        "Cost split of one Lotus-D call (bare calls)\n\n" + _table(["part", "seconds", "share"], split_rows)
    )
    sections.append(_ratio_section(ratios))
    rows = [["LotusPredictor D (1 UNet call, fastest of the pairs)", f"{lotus_call:.2f}", "1.0x", "measured"]]
    results: dict[str, float] = {}
    for task in ("depth", "normals"):
        for name, (steps, ensemble) in MARIGOLD_SETTINGS.items():
            if (steps, ensemble) == MARIGOLD_SETTINGS["v1-1 default"]:
                seconds, how = marigold[task]["measured 4x1"], "measured"
            else:
                seconds, how = (
                    _composed(split, marigold[task], steps, ensemble),
                    "composed from measured costs",
                )
            results[f"marigold_{task}_{steps}x{ensemble}_s"] = seconds
            rows.append(
                [
                    f"diffusers Marigold{task.capitalize()}Pipeline, {name} "
                    f"({steps} step{'s' if steps > 1 else ''} x {ensemble})",
                    f"{seconds:.1f}",
                    f"{seconds / lotus_call:.1f}x",
                    how,
                ]
            )
    step_note = ", ".join(
        f"{task} {values['step']:.2f} s/step, ensembling of 10 {values['ensembling']:.2f} s"
        for task, values in marigold.items()
    )
    sections.append(
        "Lotus-D vs diffusers Marigold at the same size (ratio = Marigold seconds / Lotus-D seconds)\n\n"
        + _table(["method", "seconds", "Lotus-D is faster by", "how"], rows)
        + f"\nComposed = 1 encode + steps x ensemble UNet steps + ensemble decodes + ensembling, with the "
        f"per-step cost taken from the measured 4-step call ({step_note}).\n"
    )
    vae_total = split["VAE encode"] + split["VAE decode"]
    sections.append(
        "Fast autoencoder (TAESD architecture, random weights) at SD2 size\n\n"
        + _table(
            ["Lotus-D with", "seconds", "speed-up", "autoencoder seconds"],
            [
                ["full VAE", f"{predictor_d:.2f}", "1.00x", f"{vae_total:.2f}"],
                [
                    'vae="tiny-decode"',
                    f"{fast['tiny-decode']:.2f}",
                    f"{predictor_d / fast['tiny-decode']:.2f}x",
                    f"{split['VAE encode'] + taesd_decode:.2f}",
                ],
                [
                    'vae="tiny"',
                    f"{fast['tiny']:.2f}",
                    f"{predictor_d / fast['tiny']:.2f}x",
                    f"{taesd_encode + taesd_decode:.2f}",
                ],
            ],
        )
        + f"\nTAESD encode {taesd_encode:.2f} s ({split['VAE encode'] / taesd_encode:.0f}x faster than the "
        "VAE), "
        f"decode {taesd_decode:.2f} s ({split['VAE decode'] / taesd_decode:.0f}x faster).\n"
    )
    crop = f"{pose_crop[1]}x{pose_crop[0]}"
    sections.append(
        f"SDPose top-down on the SD2 UNet, {crop} (h x w) crops, 1 person per call\n\n"
        + _table(
            ["flip test", "seconds per person", "persons/s"],
            [
                [("on" if flip else "off"), f"{seconds:.2f}", f"{1 / seconds:.4f}"]
                for flip, seconds in pose_seconds.items()
            ],
        )
    )
    joint = 2 * train_batch
    sections.append(
        f"Lotus-D training step (joint batch {joint} = {train_batch} annotation + {train_batch} "
        f"reconstruction, {train_resolution}x{train_resolution}, fp32, SD2 UNet)\n\n"
        + _table(
            ["gradient checkpointing", "peak RSS growth GiB"],
            [[("on" if flag else "off"), f"{kib / 2**20:.2f}"] for flag, kib in memory.items()],
        )
        + "\nThe growth includes the UNet's fp32 gradients "
        f"({sum(p.numel() for p in parts.unet_d.parameters()) * 4 / 2**30:.2f} GiB).\n"
    )
    _emit("\n".join(sections), out)
    results.update({f"split_{name}": seconds for name, seconds in split.items()})
    results.update(_ratio_results(ratios))
    results.update(
        {
            "taesd_encode_s": taesd_encode,
            "taesd_decode_s": taesd_decode,
            "tiny_decode_s": fast["tiny-decode"],
            "tiny_s": fast["tiny"],
            "pose_persons_per_s": 1 / pose_seconds[False],
            "pose_persons_per_s_flip": 1 / pose_seconds[True],
            "train_peak_gib_no_checkpointing": memory[False] / 2**20,
            "train_peak_gib_checkpointing": memory[True] / 2**20,
        }
    )
    return results


__all__ = [
    "MARIGOLD_SETTINGS",
    "SD2Parts",
    "build_sd2",
    "load_config",
    "marigold_pipelines",
    "PredictorTimes",
    "predictor_ratios",
    "run",
    "sd2_backbone",
    "sdpose_predictor",
]
