"""Support crops: the cropping function and the cached per-dataset pool (storage only).

A support crop is the object box plus ``context`` pixels on each side (clipped to the image),
resized so that its longer side is ``size`` (aspect ratio kept) and zero-padded at the
bottom/right to ``size x size``; the object box is returned in crop coordinates.

:class:`SupportPool` crops every usable annotation of one or more registered datasets once and
caches the crops on disk under one root shared by all runs (``FSOD.SUPPORT.CACHE_DIR``, default
``$FSOD_SUPPORT_CACHE`` or ``$DETECTRON2_DATASETS/.fsod_support_cache``, see
:func:`support_cache_root`)::

    <cache>/<dataset>-<key>/meta.json    parameters, fingerprint, counts, unreadable images
                           /index.npz    per crop: class, image, boxes, byte offset/length
                           /crops.bin    the encoded crops (content only; padding is added on read)

``<key>`` hashes the parameters (size, context, min box size, encoding) and the annotations
themselves (file names, image ids, boxes, classes), so any change makes a new cache. The local
rank 0 process builds it in a temporary directory that is renamed into place (atomic), while the
other ranks wait at a barrier; so the pool must be built by every rank when distributed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import SizeMismatchError, check_image_size, read_image
from detectron2.structures import BoxMode
from detectron2.utils import comm
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from fsod_deploy.images import IMAGE_READ_ERRORS as _FILE_READ_ERRORS
from fsod_deploy.images import convert_bgr, crop_content, crop_support

from .datasets.coco_fewshot import datasets_root

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_READ_ERRORS",
    "SupportPool",
    "convert_bgr",
    "crop_support",
    "shot_counts",
    "support_cache_root",
]

# What reading an image raises when the file is the problem: missing or unreadable (OSError),
# not an image (PIL.UnidentifiedImageError, an OSError), truncated (OSError), broken data that
# PIL's decoders report as SyntaxError, a decompression bomb, or an image whose size differs
# from its annotation (SizeMismatchError). Such images are skipped and counted; any other
# exception is a bug and propagates.
IMAGE_READ_ERRORS = _FILE_READ_ERRORS + (SizeMismatchError,)

# encodings of cached crops: "raw" stores decoded pixels (no decode per episode; ~5-10x the
# bytes of "jpg", shared by all loader workers through the page cache)
_CACHE_FORMATS = ("jpg", "png", "raw")

# Bump when the cache layout or the cropping changes: old caches are then ignored.
_CACHE_VERSION = 1
_JPEG_QUALITY = 95
_MAX_LOGGED_BAD_IMAGES = 10  # bad images logged one by one; the rest only in the summary


def _usable_boxes(record: dict[str, Any], min_box_size: float) -> list[tuple[int, np.ndarray]]:
    """(annotation index, clipped XYXY box) of the non-crowd annotations usable as supports."""
    out = []
    w, h = record.get("width"), record.get("height")
    for i, ann in enumerate(record.get("annotations", [])):
        if ann.get("iscrowd", 0):
            continue
        box = np.array(BoxMode.convert(ann["bbox"], ann["bbox_mode"], BoxMode.XYXY_ABS), "float64")
        if w and h:
            box[0::2] = box[0::2].clip(0, w)
            box[1::2] = box[1::2].clip(0, h)
        if min(box[2] - box[0], box[3] - box[1]) >= max(min_box_size, 1e-6):
            out.append((i, box))
    return out


def shot_counts(
    records: Sequence[dict[str, Any]], min_box_size: float
) -> dict[int, tuple[int, int]]:
    """Per class with a usable box (see :class:`SupportPool`) in the dataset dicts ``records``:
    ``(boxes, boxes outside the class's richest image)``, the support crops a pool of these
    records will have, at all and for the worst training query, without reading any image."""
    per_image: dict[int, list[int]] = {}
    for r in records:
        counts: dict[int, int] = {}
        for i, _ in _usable_boxes(r, min_box_size):
            c = int(r["annotations"][i]["category_id"])
            counts[c] = counts.get(c, 0) + 1
        for c, n in counts.items():
            per_image.setdefault(c, []).append(n)
    return {c: (sum(ns), sum(ns) - max(ns)) for c, ns in sorted(per_image.items())}


class _CropJob(Dataset):
    """Crops of one image per item (run in DataLoader workers while building the cache)."""

    def __init__(self, records, size, context, min_box_size, encoding):
        self.records, self.size, self.context = records, size, context
        self.min_box_size, self.encoding = min_box_size, encoding

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        r = self.records[i]
        try:
            image = read_image(r["file_name"], format="BGR")
            check_image_size(dict(r), image)
        except IMAGE_READ_ERRORS as e:  # unreadable/missing/mismatched: reported, never fatal
            return i, f"{type(e).__name__}: {e}", []
        params = [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY] if self.encoding == "jpg" else []
        crops = []
        for ann_idx, box in _usable_boxes(r, self.min_box_size):
            content, crop_box = crop_content(image, box, self.size, self.context)
            nh, nw = content.shape[:2]
            if self.encoding == "raw":  # decoded pixels: no decode per episode
                data = np.ascontiguousarray(content).tobytes()
            else:
                ok, buf = cv2.imencode("." + self.encoding, content, params)
                if not ok:
                    return i, f"could not encode a crop as {self.encoding}", []
                data = buf.tobytes()
            cid = r["annotations"][ann_idx]["category_id"]
            crops.append((cid, box.astype(np.float32), crop_box, (nh, nw), data))
        return i, None, crops


def _fingerprint(records: Sequence[dict[str, Any]]) -> str:
    h = hashlib.sha1()
    for r in records:
        anns = [
            (a["category_id"], [round(float(v), 2) for v in a["bbox"]], int(a["bbox_mode"]),
             int(a.get("iscrowd", 0)))
            for a in r.get("annotations", [])
        ]  # fmt: skip
        h.update(json.dumps([r["file_name"], str(r.get("image_id")), anns]).encode())
    return h.hexdigest()


def _identity(x):
    return x


class SupportPool:
    """Every usable annotation of one or more registered datasets, as a cached support crop.

    Usable: not crowd, box (clipped to the image) with both sides >= ``min_box_size``. Crops are
    stored in BGR. Storage and cache only: which crops an episode or an evaluation uses is the
    sampling policy's decision (:mod:`fsod_d2.data.sampling`).

    Args:
        dataset_names: registered dataset(s); all must share the same ``thing_classes``.
        size, context, min_box_size: cropping parameters (``FSOD.SUPPORT.*``).
        cache_root: directory under which the cache of this pool lives.
        encoding: "jpg", "png" or "raw" (``FSOD.SUPPORT.CACHE_FORMAT``).
        num_workers: processes used to build the cache.
        dataset_dicts: the datasets' dicts if already loaded (avoids loading them twice).
    """

    def __init__(
        self,
        dataset_names: str | Sequence[str],
        *,
        size: int,
        context: int,
        min_box_size: float,
        cache_root: str,
        encoding: str = "jpg",
        num_workers: int = 0,
        dataset_dicts: list[dict] | None = None,
    ):
        self.dataset_names = (
            (dataset_names,) if isinstance(dataset_names, str) else tuple(dataset_names)
        )
        if encoding not in _CACHE_FORMATS:
            raise ValueError(
                f"FSOD.SUPPORT.CACHE_FORMAT must be one of {_CACHE_FORMATS}, not {encoding!r}"
            )
        if size < 1 or context < 0:
            raise ValueError(f"bad support size/context: {size}/{context}")
        self.size, self.context, self.min_box_size = int(size), int(context), float(min_box_size)
        self.encoding = encoding
        self.thing_classes = _common_thing_classes(self.dataset_names)
        if dataset_dicts is None:
            dataset_dicts = [d for n in self.dataset_names for d in DatasetCatalog.get(n)]
        params = {
            "version": _CACHE_VERSION,
            "datasets": list(self.dataset_names),
            "size": self.size,
            "context": self.context,
            "min_box_size": self.min_box_size,
            "encoding": self.encoding,
        }
        # Only images with a usable box matter: the key does not change when, e.g., the loader
        # filters images without annotations before handing the dicts over.
        records = [r for r in dataset_dicts if _usable_boxes(r, self.min_box_size)]
        key = hashlib.sha1(
            (json.dumps(params, sort_keys=True) + _fingerprint(records)).encode()
        ).hexdigest()[:16]
        safe = "+".join(self.dataset_names).replace(os.sep, "_")[:100]
        self.cache_dir = os.path.join(cache_root, f"{safe}-{key}")

        if comm.get_local_rank() == 0 and not os.path.isfile(self._path("meta.json")):
            self._build(records, params, num_workers)
        comm.synchronize()  # the other ranks wait for the local rank 0 to finish the cache
        if not os.path.isfile(self._path("meta.json")):
            raise RuntimeError(
                f"Support cache {self.cache_dir} missing after the local rank 0 built it; is "
                "FSOD.SUPPORT.CACHE_DIR on a file system all ranks of a node see?"
            )
        self._load()
        self._fd: int | None = None
        self._fd_pid: int | None = None

    @classmethod
    def from_config(
        cls,
        cfg: CfgNode,
        dataset_names: str | Sequence[str],
        dataset_dicts: list[dict] | None = None,
    ) -> SupportPool:
        """The pool of ``dataset_names`` with ``cfg.FSOD.SUPPORT`` parameters."""
        s = cfg.FSOD.SUPPORT
        return cls(
            dataset_names,
            size=s.SIZE,
            context=s.CONTEXT,
            min_box_size=s.MIN_BOX_SIZE,
            cache_root=support_cache_root(cfg),
            encoding=s.CACHE_FORMAT,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            dataset_dicts=dataset_dicts,
        )

    # ------------------------------------------------------------------ cache build / load
    def _path(self, name: str) -> str:
        return os.path.join(self.cache_dir, name)

    def _build(self, records: list[dict], params: dict[str, Any], num_workers: int) -> None:
        logger.info(
            "Building the support cache %s: %d images with usable boxes (%s)",
            self.cache_dir,
            len(records),
            ", ".join(f"{k}={v}" for k, v in params.items() if k != "datasets"),
        )
        tmp = f"{self.cache_dir}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            os.makedirs(tmp)
        except OSError as e:
            raise OSError(
                f"cannot create the support cache under {os.path.dirname(self.cache_dir)} ({e}); "
                "set FSOD.SUPPORT.CACHE_DIR to a writable directory"
            ) from e
        try:
            loader = DataLoader(
                _CropJob(records, self.size, self.context, self.min_box_size, self.encoding),
                batch_size=None,
                num_workers=num_workers,
                collate_fn=_identity,
            )
            cols: dict[str, list] = {k: [] for k in ("cls", "img", "src", "box", "hw", "off")}
            lengths, bad, offset = [], [], 0
            image_keys: list[str] = []
            progress = tqdm(loader, total=len(records), desc="support crops")
            with open(os.path.join(tmp, "crops.bin"), "wb") as f, logging_redirect_tqdm():
                for i, error, crops in progress:
                    r = records[i]
                    if error is not None:
                        bad.append({"file_name": r["file_name"], "error": error})
                        if len(bad) <= _MAX_LOGGED_BAD_IMAGES:
                            logger.warning("Support pool: skipping %s (%s)", r["file_name"], error)
                        continue
                    image_keys.append(str(r["image_id"]))
                    for cid, src, box, hw, data in crops:
                        f.write(data)
                        cols["cls"].append(cid)
                        cols["img"].append(len(image_keys) - 1)
                        cols["src"].append(src)
                        cols["box"].append(box)
                        cols["hw"].append(hw)
                        cols["off"].append(offset)
                        lengths.append(len(data))
                        offset += len(data)
            n = len(lengths)
            np.savez(
                os.path.join(tmp, "index.npz"),
                class_ids=np.asarray(cols["cls"], dtype=np.int64),
                image_index=np.asarray(cols["img"], dtype=np.int64),
                image_keys=np.asarray(image_keys, dtype=str),
                src_boxes=np.asarray(cols["src"], dtype=np.float32).reshape(n, 4),
                boxes=np.asarray(cols["box"], dtype=np.float32).reshape(n, 4),
                shapes=np.asarray(cols["hw"], dtype=np.int32).reshape(n, 2),
                offsets=np.asarray(cols["off"], dtype=np.int64),
                lengths=np.asarray(lengths, dtype=np.int64),
            )
            counts = np.bincount(np.asarray(cols["cls"], dtype=np.int64), minlength=0).tolist()
            meta = dict(params, crops=n, bytes=offset, bad_images=bad, class_counts=counts)
            with open(os.path.join(tmp, "meta.json"), "w") as f:  # written last
                json.dump(meta, f, indent=1)
            try:
                os.replace(tmp, self.cache_dir)  # atomic; fails if another process won the race
            except OSError:
                if not os.path.isfile(self._path("meta.json")):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if bad:
            logger.warning(
                "Support pool: %d unreadable/missing images skipped (%d crops from %d images); "
                "list in %s",
                len(bad),
                n,
                len(image_keys),
                self._path("meta.json"),
            )
        logger.info("Support cache ready: %d crops, %.1f MB", n, offset / 2**20)

    def _load(self) -> None:
        with open(self._path("meta.json")) as f:
            self.meta = json.load(f)
        idx = np.load(self._path("index.npz"))
        self.class_of = idx["class_ids"]
        self.image_index = idx["image_index"]
        self.image_keys = idx["image_keys"].tolist()
        self.src_boxes = idx["src_boxes"]
        self.boxes = idx["boxes"]
        self.shapes = idx["shapes"]
        self.offsets = idx["offsets"]
        self.lengths = idx["lengths"]
        self._image_code = {k: i for i, k in enumerate(self.image_keys)}
        order = np.argsort(self.class_of, kind="stable")
        classes, starts = np.unique(self.class_of[order], return_index=True)
        self._by_class = {
            int(c): order[s:e] for c, s, e in zip(classes, starts, list(starts[1:]) + [len(order)])
        }
        # Worst case over query images: crops left once the richest image is excluded.
        self._min_available = {}
        for c, members in self._by_class.items():
            per_image = np.bincount(self.image_index[members])
            self._min_available[c] = int(len(members) - per_image.max())
        self.bad_images = [b["file_name"] for b in self.meta.get("bad_images", [])]

    def __getstate__(self):  # the file descriptor is per process
        state = dict(self.__dict__)
        state["_fd"], state["_fd_pid"] = None, None
        return state

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._fd_pid == os.getpid():
            os.close(self._fd)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.class_of)

    @property
    def class_ids(self) -> list[int]:
        """Contiguous ids of the classes that have at least one support crop."""
        return sorted(self._by_class)

    def num_instances(self, class_id: int) -> int:
        """Crops of a class."""
        members = self._by_class.get(int(class_id))
        return 0 if members is None else len(members)

    def available(self, class_id: int, exclude_image_id: Any = None) -> np.ndarray:
        """Indices of the crops of ``class_id``, without those of ``exclude_image_id``."""
        members = self._by_class.get(int(class_id))
        if members is None:
            return np.zeros(0, dtype=np.int64)
        if exclude_image_id is None:
            return members
        code = self._image_code.get(str(exclude_image_id))
        if code is None:
            return members
        return members[self.image_index[members] != code]

    def min_available(self, class_id: int) -> int:
        """Crops of a class left for the worst-case query: all minus those of its richest
        image."""
        return self._min_available.get(int(class_id), 0)

    def _read_bytes(self, i: int) -> bytes:
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd = os.open(self._path("crops.bin"), os.O_RDONLY)
            self._fd_pid = os.getpid()
        return os.pread(self._fd, int(self.lengths[i]), int(self.offsets[i]))

    def _content(self, i: int) -> np.ndarray:
        """The stored (h, w, 3) BGR content of crop ``i`` (decoded unless stored raw)."""
        data = np.frombuffer(self._read_bytes(i), dtype=np.uint8)
        h, w = (int(v) for v in self.shapes[i])
        if self.encoding == "raw" and data.size == h * w * 3:
            return data.reshape(h, w, 3)
        content = None if self.encoding == "raw" else cv2.imdecode(data, cv2.IMREAD_COLOR)
        if content is None:
            raise OSError(f"support cache {self.cache_dir} is corrupt (crop {i}); delete it")
        return content

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Crop ``i`` as ``(uint8 (S, S, 3) BGR, float32 (4,) XYXY box in crop pixels)``."""
        crops, boxes = self.load_many([i])
        return crops[0], boxes[0]

    def load_many(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Crops ``(len, S, S, 3)`` BGR and boxes ``(len, 4)``, written into one zero-padded
        array (no per-crop padding copy)."""
        indices = [int(i) for i in indices]
        crops = np.zeros((len(indices), self.size, self.size, 3), dtype=np.uint8)
        for k, i in enumerate(indices):
            content = self._content(i)
            crops[k, : content.shape[0], : content.shape[1]] = content
        return crops, self.boxes[indices].copy()

    def image_key(self, i: int) -> str:
        """``str(image_id)`` of the image crop ``i`` comes from."""
        return self.image_keys[int(self.image_index[i])]


def support_cache_root(cfg: CfgNode) -> str:
    """``FSOD.SUPPORT.CACHE_DIR``, else ``$FSOD_SUPPORT_CACHE``, else
    ``$DETECTRON2_DATASETS/.fsod_support_cache``: one root for every run on the same data (each
    pool's folder is keyed by its datasets, crop settings and annotations), so a dataset is
    cropped once, not once per output directory."""
    if cfg.FSOD.SUPPORT.CACHE_DIR:
        return cfg.FSOD.SUPPORT.CACHE_DIR
    default = os.path.join(datasets_root(), ".fsod_support_cache")
    return os.path.expanduser(os.getenv("FSOD_SUPPORT_CACHE", default))


def _common_thing_classes(names: Sequence[str]) -> list[str]:
    classes = None
    for n in names:
        tc = MetadataCatalog.get(n).get("thing_classes")
        if tc is None:
            raise ValueError(f"dataset '{n}' has no thing_classes metadata; is it registered?")
        if classes is not None and list(tc) != classes:
            raise ValueError(f"datasets {list(names)} have different thing_classes")
        classes = list(tc)
    return classes
