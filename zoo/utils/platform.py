"""The software and CPU kernel path a training ran on, recorded next to its bytes; how to select it again."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

# The environment variables that select the kernels: read once, when torch (ATen), oneDNN and MKL start.
ATEN_VARIABLE = "ATEN_CPU_CAPABILITY"
ONEDNN_VARIABLE = "ONEDNN_MAX_CPU_ISA"
MKL_VARIABLE = "MKL_CBWR"
# The zoo's own switch, read by `select_kernels`: "native" (torch's choice) or "portable".
KERNELS_VARIABLE = "ZOO_CPU_KERNELS"

# Kernels that round the same on any x86-64 CPU with AVX2 (measured on the VAE stage: about 3.4x slower than
# native). oneDNN (convolutions) and NNPACK choose their code path and blocking by the CPU model, so they are
# switched off and convolutions run as im2col + MKL GEMM; MKL's COMPATIBLE branch is the only one Intel
# documents as reproducible on non-Intel CPUs (MKL_CBWR=AVX2 falls back to the CPU's own branch there); ATen's
# own kernels are pinned to their AVX2 build.
PORTABLE_PLATFORM = {"cpu_capability": "AVX2", "kernels": "portable", "mkl_cbwr": "COMPATIBLE"}
# Recorded fields that no environment variable selects and that do not stop a rebuild: native kernels round
# by the CPU model, but a machine of another model may still give the same bytes, so it is named, not refused.
ADVISORY_FIELDS = frozenset({"cpu_model"})
# Every variable `kernel_environment` may set: one that a platform does not name must be absent.
PIN_VARIABLES = (ATEN_VARIABLE, ONEDNN_VARIABLE, MKL_VARIABLE, KERNELS_VARIABLE)


def kernel_platform() -> dict[str, str]:
    """What a bit-for-bit rebuild must share besides the recipe: libraries and the CPU kernel path.

    One thread fixes the reduction order, but torch, oneDNN and MKL pick vectorised kernels by the CPU's
    instruction set (AVX2, AVX-512, ...), and different kernels round differently: a 60-step VAE stage gave
    four different files for four kernel settings on one machine. `ATEN_CPU_CAPABILITY`,
    `ONEDNN_MAX_CPU_ISA` and `MKL_CBWR` select them (see `kernel_environment`); `ZOO_CPU_KERNELS=portable`
    (`PORTABLE_PLATFORM`) selects kernels that do not depend on the CPU model. The `kernels` and
    `mkl_cbwr` fields are recorded only when set, so records written before they existed still compare;
    native kernels also record the `cpu_model` (`cpu_model()`), which their bytes depend on.
    """
    import diffusers
    import transformers

    platform = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get(ONEDNN_VARIABLE, "unset"),
    }
    if os.environ.get(KERNELS_VARIABLE, "native") != "native":
        platform["kernels"] = os.environ[KERNELS_VARIABLE]
    else:
        platform["cpu_model"] = cpu_model()
    if MKL_VARIABLE in os.environ:
        platform["mkl_cbwr"] = os.environ[MKL_VARIABLE]
    return platform


def cpu_model() -> str:
    """The CPU's vendor, family, model and stepping: 'AuthenticAMD family 25 model 17 stepping 1 (AMD EPYC)'.

    oneDNN and MKL choose their native code path by these, not only by the instruction set; read from
    /proc/cpuinfo (the marketing name alone may be masked by a hypervisor), "unknown" where there is none.
    """
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break  # the first processor's block is enough
                name, _, value = line.partition(":")
                fields[name.strip()] = value.strip()
    except OSError:
        return "unknown"
    keys = ("vendor_id", "cpu family", "model", "stepping")
    if not all(key in fields for key in keys):
        return "unknown"
    return (
        f"{fields['vendor_id']} family {fields['cpu family']} model {fields['model']} "
        f"stepping {fields['stepping']} ({fields.get('model name', '?')})"
    )


def select_kernels() -> str:
    """Apply `ZOO_CPU_KERNELS` to this process and return it ("native" when unset).

    "portable" switches oneDNN and NNPACK off (process-wide, for every later forward and backward) and
    requires the rest of `PORTABLE_PLATFORM`'s environment, which only takes effect when set before torch
    starts: a ValueError names the variable otherwise.
    """
    kernels = os.environ.get(KERNELS_VARIABLE, "native")
    if kernels == "native":
        return kernels
    if kernels != "portable":
        raise ValueError(f"{KERNELS_VARIABLE}={kernels!r}: expected 'native' or 'portable'")
    for name, value in kernel_environment(PORTABLE_PLATFORM).items():
        if os.environ.get(name) != value:
            raise ValueError(
                f"{KERNELS_VARIABLE}=portable needs {name}={value} set before the process starts "
                f"(it is {os.environ.get(name)!r}); `env $(python -m zoo.utils.platform --portable) COMMAND`"
            )
    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)
    return kernels


def kernel_environment(platform: Mapping[str, str]) -> dict[str, str]:
    """The environment variables that make a new process run the kernels of a recorded `platform`.

    They take effect only if set before torch is imported. A recorded oneDNN ISA of "unset" means oneDNN
    chose by the CPU it ran on: nothing to set, and only a CPU of the same ISA family reproduces it.
    """
    environment = {ATEN_VARIABLE: platform["cpu_capability"].lower()}
    if platform.get("onednn_max_cpu_isa", "unset") != "unset":
        environment[ONEDNN_VARIABLE] = platform["onednn_max_cpu_isa"]
    if "mkl_cbwr" in platform:
        environment[MKL_VARIABLE] = platform["mkl_cbwr"]
    if "kernels" in platform:
        environment[KERNELS_VARIABLE] = platform["kernels"]
    return environment


def unpinned_environment() -> dict[str, str]:
    """This process's environment without any of the `PIN_VARIABLES` (for a child that sets its own)."""
    return {name: value for name, value in os.environ.items() if name not in PIN_VARIABLES}


def platform_differences(
    recorded: Mapping[str, str], current: Mapping[str, str], advisory: bool | None = None
) -> list[str]:
    """'name: recorded X, here Y' for every recorded field this process does not share.

    `advisory` True keeps only the `ADVISORY_FIELDS` (the CPU model), False only the others, None all.
    """
    return [
        f"{name}: recorded {value!r}, here {current.get(name)!r}"
        for name, value in recorded.items()
        if current.get(name) != value and (advisory is None or (name in ADVISORY_FIELDS) == advisory)
    ]


def recorded_platform(folder: str | Path) -> dict[str, str]:
    """The kernel platform in `folder`/recipe.json (the stage that wrote its last bytes)."""
    path = Path(folder) / "recipe.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no recipe.json to read a kernel platform from")
    record = json.loads(path.read_text())
    if not isinstance(record.get("platform"), dict):
        raise ValueError(f"{path}: no 'platform' record")
    return record["platform"]


if __name__ == "__main__":
    # `env $(python -m zoo.utils.platform FOLDER) COMMAND` runs COMMAND on FOLDER's recorded kernels,
    # `env $(python -m zoo.utils.platform --portable) COMMAND` on the portable ones.
    import sys

    platform = PORTABLE_PLATFORM if sys.argv[1] == "--portable" else recorded_platform(sys.argv[1])
    environment = kernel_environment(platform)
    print(" ".join(f"{name}={value}" for name, value in environment.items()))
