"""The Lotus/SDPose task switcher: the 4-d class label that selects annotation or RGB reconstruction."""

from __future__ import annotations

from typing import Literal

import torch

Task = Literal["annotation", "reconstruction"]

# One-hot task index, then [sin(onehot), cos(onehot)]: the official Lotus/SDPose encoding.
_TASK_INDEX: dict[str, int] = {"annotation": 0, "reconstruction": 1}
TASK_CODE_DIM = 4


def task_code(task: Task) -> torch.Tensor:
    """The 4-d code of `task`: annotation [sin 1, sin 0, cos 1, cos 0], reconstruction
    [sin 0, sin 1, cos 0, cos 1]."""
    if task not in _TASK_INDEX:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(_TASK_INDEX)}")
    one_hot = torch.zeros(2, dtype=torch.float32)
    one_hot[_TASK_INDEX[task]] = 1.0
    # sin/cos in float32, as the official Lotus and SDPose code computes them
    # (float64 rounds sin 1 differently).
    return torch.cat([torch.sin(one_hot), torch.cos(one_hot)])  # [4]


def task_codes(task: Task, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The code of `task` repeated for a batch: [B, 4]."""
    return task_code(task).to(device).expand(batch_size, TASK_CODE_DIM)
