"""Support sets from a folder of example images: one sub-folder per class (torch-free).

Layout (what ``tools/predict.py --supports DIR`` reads)::

    DIR/<class name>/*.jpg|png|...     example images of the class
    DIR/<class name>/boxes.json        optional: {"image file name": [x0, y0, x1, y1], ...}
                                       or a list of such boxes per image (one shot each)

An image without a box entry is the object itself (the whole image is the box).
:func:`save_support_folder` writes a folder in this format (the app saves its classes with it).
Every problem
with the folder raises :class:`SupportFolderError` with one line that names the file and says
what to do about it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .images import IMAGE_READ_ERRORS, convert_bgr, crop_support, read_image
from .inputs import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

__all__ = [
    "BOX_FILE",
    "IMAGE_EXTENSIONS",
    "SupportFolderError",
    "check_class_name",
    "crop_image_examples",
    "load_support_folder",
    "read_box_file",
    "save_support_folder",
]

BOX_FILE = "boxes.json"
_BOX_FORMAT = '{"image.jpg": [x0, y0, x1, y1]} or {"image.jpg": [[x0, y0, x1, y1], ...]}'


class SupportFolderError(ValueError):
    """A support folder, one of its images or its box file cannot be used (the message names
    the file and the fix)."""


def _boxes_of(value: Any, path: str, name: str) -> list[list[float]]:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.zeros((0,))
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4 or len(arr) == 0 or not np.isfinite(arr).all():
        raise SupportFolderError(
            f"{path}: the entry of {name!r} is not a box; write {_BOX_FORMAT} (pixels)"
        )
    if (arr[:, 2] <= arr[:, 0]).any() or (arr[:, 3] <= arr[:, 1]).any():
        raise SupportFolderError(
            f"{path}: box of {name!r} is not [x0, y0, x1, y1] with x1 > x0 and y1 > y0"
        )
    return arr.tolist()


def _box_text(box: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def read_box_file(class_dir: str) -> dict[str, list[list[float]]]:
    """The boxes of ``class_dir/boxes.json`` per image file name (``{}`` without the file)."""
    path = os.path.join(class_dir, BOX_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise SupportFolderError(
            f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
            f"write {_BOX_FORMAT}"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SupportFolderError(f"{path}: cannot be read ({e}); fix or remove it") from None
    if not isinstance(raw, dict):
        raise SupportFolderError(
            f"{path}: expected an object mapping image file names to boxes, "
            f"got a JSON {type(raw).__name__}; write {_BOX_FORMAT}"
        )
    return {str(name): _boxes_of(value, path, name) for name, value in raw.items()}


def _read_support_image(path: str) -> np.ndarray:
    try:
        return read_image(path, "BGR")
    except IMAGE_READ_ERRORS as e:
        raise SupportFolderError(
            f"{path}: cannot read this support image ({type(e).__name__}: {e}); "
            "replace it with a readable image or remove it"
        ) from None


def crop_image_examples(
    image: np.ndarray,
    boxes: Sequence[Sequence[float]] | None,
    *,
    size: int,
    context: int,
    image_format: str,
    box_file: str = BOX_FILE,
    file_name: str = "",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The support crops of one example image, as :func:`load_support_folder` makes them.

    Args:
        image: the example image, BGR HWC uint8 (:func:`~fsod_deploy.images.read_image`).
        boxes: the object's boxes in the image's pixels (one shot each); None or empty: the
            whole image is the object.
        size, context, image_format: as in :func:`load_support_folder`.
        box_file, file_name: where the boxes come from, named in messages.

    Returns:
        Per box ``(crop, box)``: the (S, S, 3) uint8 crop in ``image_format`` and the box in crop
        pixels (float32 XYXY).

    Raises:
        SupportFolderError: a box without area inside the image.
    """
    h, w = image.shape[:2]
    out = []
    for box in boxes or [[0.0, 0.0, float(w), float(h)]]:
        box = [float(v) for v in box]
        try:
            crop, crop_box = crop_support(image, box, size, context)
        except ValueError as e:  # the box has no area inside the image
            raise SupportFolderError(
                f"{box_file}: box of {file_name!r}: {e}; give the object's box in the image's "
                "pixels"
            ) from None
        if box[0] < 0 or box[1] < 0 or box[2] > w or box[3] > h:
            clipped = [max(box[0], 0), max(box[1], 0), min(box[2], w), min(box[3], h)]
            logger.warning(
                "%s: the box %s of %r reaches outside the image (%d x %d pixels); "
                "it is clipped to %s",
                box_file,
                _box_text(box),
                file_name,
                w,
                h,
                _box_text(clipped),
            )
        out.append((convert_bgr(crop, image_format), crop_box))
    return out


def load_support_folder(
    folder: str,
    *,
    size: int,
    context: int,
    image_format: str,
    k_shot: int = 0,
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Crop every example of a support folder (see the module docstring).

    Args:
        folder: the support folder, one sub-folder per class (the folder name is the class).
        size, context: support crop size and context pixels (``FSOD.SUPPORT.SIZE/CONTEXT``).
        image_format: ``INPUT.FORMAT`` of the model ("BGR" or "RGB").
        k_shot: use at most this many shots per class (0: all), in file-name order.

    Returns:
        Per class, sorted by folder name: ``(name, uint8 (K, 3, S, S) crops, float32 (K, 4)
        XYXY boxes in crop pixels)``; K may differ between classes.

    Raises:
        SupportFolderError: a missing or empty folder, an unreadable image, a malformed box file.
    """
    if not os.path.isdir(folder):
        raise SupportFolderError(
            f"support folder {folder} does not exist; give a folder with one sub-folder of "
            "example images per class"
        )
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if not classes:
        raise SupportFolderError(
            f"support folder {folder} has no class sub-folder; put the examples of each class "
            "in a sub-folder named after the class"
        )
    out = []
    for name in classes:
        class_dir = os.path.join(folder, name)
        boxes_of = read_box_file(class_dir)
        files = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
        unknown = sorted(set(boxes_of) - set(files))
        if unknown:
            raise SupportFolderError(
                f"{os.path.join(class_dir, BOX_FILE)} names images that are not in "
                f"{class_dir}: {unknown[:5]}; fix the file names or remove their entries"
            )
        crops, crop_boxes = [], []
        for f in files:
            if 0 < k_shot <= len(crops):
                break
            path = os.path.join(class_dir, f)
            image = _read_support_image(path)
            examples = crop_image_examples(
                image,
                boxes_of.get(f),
                size=size,
                context=context,
                image_format=image_format,
                box_file=os.path.join(class_dir, BOX_FILE),
                file_name=f,
            )
            crops += [c for c, _ in examples]
            crop_boxes += [b for _, b in examples]
        if k_shot > 0:
            crops, crop_boxes = crops[:k_shot], crop_boxes[:k_shot]
        if not crops:
            raise SupportFolderError(
                f"support class folder {class_dir} has no image ({', '.join(IMAGE_EXTENSIONS)}); "
                "add example images or remove the folder"
            )
        images = np.ascontiguousarray(np.stack(crops).transpose(0, 3, 1, 2))
        out.append((name, images, np.stack(crop_boxes).astype(np.float32)))
    return out


def check_class_name(name: str) -> str:
    """``name`` stripped, if it can be a class folder's name.

    Raises:
        SupportFolderError: an empty name, ``.`` or ``..``, a leading dot (a hidden folder) or a
            path separator.
    """
    name = str(name).strip()
    if not name:
        raise SupportFolderError("the class has no name; give it one (its folder's name)")
    if name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\"):
        raise SupportFolderError(
            f"class name {name!r} cannot be a folder name; give a name without '/' or '\\' "
            "that does not start with '.'"
        )
    return name


def save_support_folder(
    folder: str,
    classes: Mapping[str, Sequence[tuple[str, bytes, Sequence[Sequence[float]] | None]]],
) -> None:
    """Write a support folder (the module docstring's layout) that :func:`load_support_folder`
    reads back.

    Args:
        folder: the folder to create; it must not exist or be empty (nothing is overwritten).
        classes: per class name, its examples ``(file name, the image file's bytes, boxes)``:
            the bytes are written as they are; boxes (XYXY pixels, one shot each) go to the
            class's ``boxes.json``, None for an example that is the object itself.

    Raises:
        SupportFolderError: a non-empty folder, a class without examples, a class or file name
            that cannot be written, or a folder that cannot be written.
    """
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise SupportFolderError(
            f"{folder} exists and is not an empty folder; give a new folder to save the classes to"
        )
    if not classes:
        raise SupportFolderError(f"no class to save to {folder}; add a class first")
    parent = os.path.dirname(os.path.abspath(folder))
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(folder))}.", dir=parent)
    except OSError as e:
        raise SupportFolderError(
            f"{folder} cannot be written ({e.strerror or e}); give a folder you can write to"
        ) from None
    try:
        for name, examples in classes.items():
            check_class_name(name)
            if not examples:
                raise SupportFolderError(f"class {name!r} has no example image to save")
            class_dir = os.path.join(tmp, name)
            os.makedirs(class_dir)
            boxes = {}
            for file_name, data, file_boxes in examples:
                if os.path.basename(file_name) != file_name or not file_name.lower().endswith(
                    IMAGE_EXTENSIONS
                ):
                    raise SupportFolderError(
                        f"class {name!r}: {file_name!r} is not an image file name "
                        f"({', '.join(IMAGE_EXTENSIONS)}) without a folder"
                    )
                if os.path.exists(os.path.join(class_dir, file_name)):
                    raise SupportFolderError(f"class {name!r}: two examples named {file_name!r}")
                with open(os.path.join(class_dir, file_name), "wb") as f:
                    f.write(data)
                if file_boxes:
                    rows = [[float(v) for v in b] for b in file_boxes]
                    boxes[file_name] = rows[0] if len(rows) == 1 else rows
            if boxes:
                with open(os.path.join(class_dir, BOX_FILE), "w", encoding="utf-8") as f:
                    json.dump(boxes, f, indent=1)
        if os.path.isdir(folder):
            os.rmdir(folder)  # empty (checked above)
        os.replace(tmp, folder)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SupportFolderError(
            f"{folder} cannot be written ({e.strerror or e}); give a folder you can write to"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
