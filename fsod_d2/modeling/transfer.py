"""Host-to-device transfers that do not stall the host: pinned memory, ``non_blocking`` copies.

A blocking copy (``tensor.to("cuda")``) waits for the copy and, through it, for every kernel
queued before it; from pageable memory it is also staged through a bounce buffer. Loader tensors
are copied from page-locked memory with ``non_blocking=True`` instead, and converted (uint8 ->
float, normalization) on the device, so that 1 byte per pixel crosses the bus instead of 4.
"""

from typing import Union

import torch
from detectron2.structures import Boxes, Instances
from torch import Tensor

Device = Union[str, torch.device]


def to_device(t: Tensor, device: Device) -> Tensor:
    """``t`` on ``device``; a CPU tensor bound for CUDA is pinned (if the loader did not) and
    copied without blocking. Same dtype: convert after the copy."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    if not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def instances_to_device(instances: Instances, device: Device) -> Instances:
    """:meth:`Instances.to` with :func:`to_device` for tensor and ``Boxes`` fields."""
    out = Instances(instances.image_size)
    for name, value in instances.get_fields().items():
        if isinstance(value, Boxes):
            value = Boxes(to_device(value.tensor, device))
        elif isinstance(value, Tensor):
            value = to_device(value, device)
        elif hasattr(value, "to"):
            value = value.to(device)
        out.set(name, value)
    return out
