"""Class prototypes: what the model keeps of a support set, computed once and reused.

A :class:`PrototypeSet` holds, per class, the attention-RPN kernel (C) and the ROI-level support
feature (C5 x h x w), both averaged over the K shots. Saved files carry a fingerprint of the
weights and of the support set, so a file made with other weights or supports is detected on
load instead of silently used. Sets are combined with :meth:`PrototypeSet.select`,
:meth:`PrototypeSet.reorder` and :meth:`PrototypeSet.concatenate` (never field by field), which
keep the fingerprints meaningful.
"""

import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from torch import Tensor, nn

from fsod_deploy.prototypes import Prototypes
from fsod_deploy.prototypes import support_fingerprint as _np_support_fingerprint

from ..utils.files import atomic_write
from ..utils.text import count

logger = logging.getLogger(__name__)

_FORMAT_VERSION = 1


class StalePrototypeError(RuntimeError):
    """A prototype file does not match the model weights or support set it is used with."""


def _hash_tensors(items: Iterable, h=None) -> "hashlib._Hash":
    h = h or hashlib.sha1()
    for name, t in items:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h


def weights_fingerprint(model: nn.Module) -> str:
    """Hash of every tensor in ``model.state_dict()`` (names, dtypes, shapes and values)."""
    return _hash_tensors(sorted(model.state_dict().items())).hexdigest()


def support_fingerprint(
    support_images: Tensor, support_boxes: Tensor, class_ids: Tensor, shots_per_class: int
) -> str:
    """Hash of a support set: crops, boxes, class ids and K (the same value as
    :func:`fsod_deploy.prototypes.support_fingerprint` of the arrays, so prototypes computed by
    the exported runtime and by the model carry the same fingerprint)."""
    return _np_support_fingerprint(
        support_images.detach().cpu().numpy(),
        support_boxes.detach().cpu().float().numpy(),
        torch.as_tensor(class_ids).cpu().long().numpy(),
        shots_per_class,
    )


@dataclass
class PrototypeSet:
    """Per-class support representation consumed by :class:`FsodRCNN` at inference."""

    class_ids: Tensor  # (N,) contiguous dataset class ids, the values of pred_classes
    rpn_kernels: Tensor  # (N, C) attention-RPN kernels
    roi_prototypes: Tensor  # (N, C5, h, w) ROI-level support features
    class_names: List[str] = field(default_factory=list)
    weights_fingerprint: str = ""
    support_fingerprint: str = ""

    def __post_init__(self):
        n = len(self.class_ids)
        if self.rpn_kernels.shape[0] != n or self.roi_prototypes.shape[0] != n:
            raise ValueError(
                f"PrototypeSet: {n} class ids but {self.rpn_kernels.shape[0]} kernels and "
                f"{self.roi_prototypes.shape[0]} ROI prototypes"
            )
        if self.class_names and len(self.class_names) != n:
            raise ValueError(f"PrototypeSet: {n} class ids but {len(self.class_names)} names")

    def __len__(self) -> int:
        return len(self.class_ids)

    def _derived(
        self, index: Sequence[int], operation: str, keep_labels: bool = False
    ) -> "PrototypeSet":
        """Entries ``index`` of this set (with this set's labels if ``keep_labels``); the
        support fingerprint records the operation: another set, another hash."""
        index = [int(i) for i in index]
        labels = list(range(len(self))) if keep_labels else index
        t = torch.as_tensor(index, dtype=torch.long, device=self.class_ids.device)
        lt = torch.as_tensor(labels, dtype=torch.long, device=self.class_ids.device)
        fp = self.support_fingerprint
        if fp:
            fp = hashlib.sha1(f"{fp}|{operation}|{index}".encode()).hexdigest()
        return PrototypeSet(
            self.class_ids[lt],
            self.rpn_kernels[t.to(self.rpn_kernels.device)],
            self.roi_prototypes[t.to(self.roi_prototypes.device)],
            [self.class_names[i] for i in labels] if self.class_names else [],
            self.weights_fingerprint,
            fp,
        )

    def select(self, class_ids: Iterable[int]) -> "PrototypeSet":
        """The prototypes of these classes (contiguous ids), in the order given.

        Raises:
            ValueError: if a class has no prototype in this set.
        """
        ids = [int(c) for c in class_ids]
        position = {c: i for i, c in enumerate(self.class_ids.tolist())}
        missing = [c for c in ids if c not in position]
        if missing:
            have = sorted(position)
            raise ValueError(f"PrototypeSet: no prototype for classes {missing} (it has {have})")
        if len(set(ids)) != len(ids):
            raise ValueError(f"PrototypeSet.select: repeated class ids in {ids}")
        index = [position[c] for c in ids]
        return self if index == list(range(len(self))) else self._derived(index, "select")

    def reorder(self, order: Sequence[int], *, keep_labels: bool = False) -> "PrototypeSet":
        """The set with its entries permuted: entry ``i`` of the result is entry ``order[i]``.

        ``keep_labels=True`` permutes only the prototypes, not the class ids and names: class
        ``i`` is then detected with the supports of class ``order[i]`` (the support-shuffled
        control of the benchmarks).
        """
        order = [int(i) for i in order]
        if sorted(order) != list(range(len(self))):
            raise ValueError(
                f"PrototypeSet.reorder: {order} is not a permutation of 0..{len(self) - 1}"
            )
        if order == list(range(len(self))):
            return self
        return self._derived(order, "shuffle" if keep_labels else "reorder", keep_labels)

    @classmethod
    def concatenate(cls, parts: Sequence["PrototypeSet"]) -> "PrototypeSet":
        """One set of the classes of ``parts`` (in order), e.g. classes computed one by one.

        Raises:
            ValueError: without parts, if a class is in two parts, or if the parts were computed
                with different weights.
        """
        parts = list(parts)
        if not parts:
            raise ValueError("PrototypeSet.concatenate needs at least one set")
        if len(parts) == 1:
            return parts[0]
        ids = [c for p in parts for c in p.class_ids.tolist()]
        if len(set(ids)) != len(ids):
            raise ValueError(f"PrototypeSet.concatenate: a class is in two sets: {ids}")
        weights = {p.weights_fingerprint for p in parts}
        if len(weights) > 1:
            raise ValueError(
                "PrototypeSet.concatenate: the sets were computed with different weights"
            )
        named = [bool(p.class_names) for p in parts]
        if any(named) and not all(named):
            raise ValueError("PrototypeSet.concatenate: some sets have class names, others not")
        device = parts[0].class_ids.device
        return cls(
            class_ids=torch.cat([p.class_ids.to(device) for p in parts]),
            rpn_kernels=torch.cat([p.rpn_kernels.to(device) for p in parts]),
            roi_prototypes=torch.cat([p.roi_prototypes.to(device) for p in parts]),
            class_names=[n for p in parts for n in p.class_names],
            weights_fingerprint=parts[0].weights_fingerprint,
            support_fingerprint=hashlib.sha1(
                "|".join(p.support_fingerprint for p in parts).encode()
            ).hexdigest(),
        )

    def to(self, device) -> "PrototypeSet":
        return PrototypeSet(
            self.class_ids.to(device),
            self.rpn_kernels.to(device),
            self.roi_prototypes.to(device),
            list(self.class_names),
            self.weights_fingerprint,
            self.support_fingerprint,
        )

    def state(self) -> Dict:
        return {
            "format_version": _FORMAT_VERSION,
            "class_ids": self.class_ids.cpu(),
            "class_names": list(self.class_names),
            "rpn_kernels": self.rpn_kernels.cpu(),
            "roi_prototypes": self.roi_prototypes.cpu(),
            "weights_fingerprint": self.weights_fingerprint,
            "support_fingerprint": self.support_fingerprint,
        }

    def to_numpy(self) -> Prototypes:
        """The portable form (:class:`fsod_deploy.prototypes.Prototypes`), the exported
        detector's class input."""
        return Prototypes(
            self.class_ids.cpu().numpy(),
            self.rpn_kernels.detach().cpu().float().numpy(),
            self.roi_prototypes.detach().cpu().float().numpy(),
            list(self.class_names),
            self.weights_fingerprint,
            self.support_fingerprint,
        )

    @classmethod
    def from_numpy(cls, p: Prototypes) -> "PrototypeSet":
        return cls(
            torch.from_numpy(p.class_ids),
            torch.from_numpy(p.rpn_kernels),
            torch.from_numpy(p.roi_prototypes),
            list(p.class_names),
            p.weights_fingerprint,
            p.support_fingerprint,
        )

    def save(self, path: str) -> None:
        """Write atomically (readers never see a partial file): a ``.npz`` path in the portable
        format that the exported runtime reads, any other path with ``torch.save``."""
        if str(path).endswith(".npz"):
            self.to_numpy().save(str(path))
        else:
            with atomic_write(path, "wb") as f:
                torch.save(self.state(), f)
        logger.info("Saved %s to %s", count(len(self), "class prototype"), path)

    @classmethod
    def load(
        cls,
        path: str,
        *,
        weights_fingerprint: Optional[str] = None,
        support_fingerprint: Optional[str] = None,
    ) -> "PrototypeSet":
        """Load a prototype file; raise :class:`StalePrototypeError` if a given fingerprint
        differs from the stored one (weights changed, or another support set)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Prototype file {path} does not exist")
        if str(path).endswith(".npz"):
            p = Prototypes.load(str(path))
            state = dict(format_version=_FORMAT_VERSION, **vars(cls.from_numpy(p)))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format_version") != _FORMAT_VERSION:
            raise StalePrototypeError(
                f"{path}: format version {state.get('format_version')} != {_FORMAT_VERSION}; "
                "recompute the prototypes (tools/predict.py --supports ...)"
            )
        checks = (
            ("weights", weights_fingerprint, state["weights_fingerprint"]),
            ("support set", support_fingerprint, state["support_fingerprint"]),
        )
        for what, expected, stored in checks:
            if expected is not None and expected != stored:
                raise StalePrototypeError(
                    f"{path} was computed with a different {what} ({stored[:12]} != "
                    f"{expected[:12]}); recompute the prototypes from the support images"
                )
        state.pop("format_version")
        return cls(**state)
