"""The few-shot detection app without its user interface: ``tools/app.py`` wires this to Gradio.

Everything goes through the functions ``tools/predict.py`` uses, so the app and the command line
cannot drift apart:

* classes (:class:`ClassLibrary`): example images with the object's box on each (no box: the
  whole image is the object), cropped by
  :func:`~fsod_deploy.support_folder.crop_image_examples` (the support folder reader's crop) and
  turned into a prototype by :meth:`~fsod_deploy.detector.Detector.prototypes`, once per class
  (kept in memory by the weights' and the support set's fingerprints); a support folder in
  ``predict.py``'s format is read by the same reader and written by
  :func:`~fsod_deploy.support_folder.save_support_folder`; a prototype file is checked against
  the weights as ``predict.py --prototypes`` checks it;
* detection (:meth:`Session.detect`): :meth:`~fsod_deploy.detector.Detector.detect` with the
  prototypes of all classes, numbered 0, 1, ... in class-name order as ``predict.py`` numbers
  a support folder's classes; pictures and the COCO json come from
  :class:`~fsod_deploy.outputs.PredictionWriter`; another threshold redraws the pictures
  without running the model (:meth:`Session.redraw`);
* counting (:meth:`Session.count_in_image`): 1-3 boxes drawn on one image are the examples of
  one class (crops of that image); its detections in the same image above the threshold are
  counted.

A box is drawn with two clicks on an image, at two opposite corners (:class:`Corners`), or
typed as ``x0, y0, x1, y1`` in the image's pixels. Every problem a user can cause raises
:class:`AppError`, one line that the page shows; the app goes on serving.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cv2
import numpy as np

from .detector import Detections, Detector
from .draw import draw_detections
from .images import IMAGE_READ_ERRORS, read_image
from .inputs import IMAGE_EXTENSIONS
from .outputs import PredictionWriter
from .prototypes import PrototypeFileError, Prototypes, support_fingerprint
from .support_folder import (
    SupportFolderError,
    check_class_name,
    crop_image_examples,
    read_box_file,
    save_support_folder,
)

__all__ = [
    "MAX_COUNT_EXAMPLES",
    "AppError",
    "ClassLibrary",
    "Corners",
    "Example",
    "Session",
    "View",
    "format_box",
    "parse_box",
    "parse_box_lines",
    "read_example",
]

MAX_COUNT_EXAMPLES = 3
_BOX_COLOR = (255, 0, 255)  # BGR: the boxes being drawn (detections have their class colours)
_Boxes = list[list[float]]


class AppError(ValueError):
    """A problem the user can fix; the message is one line for the page."""


def _count(n: int, noun: str) -> str:
    """ "1 class", "2 classes", "1 image", "0 images"."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun}{'es' if noun.endswith(('s', 'x', 'ch', 'sh')) else 's'}"


# ---------------------------------------------------------------- images and boxes
@dataclass
class Example:
    """An uploaded image: its file name, its file's bytes (saved as they are) and its pixels."""

    file_name: str
    data: bytes
    image: np.ndarray  # BGR HWC uint8, as read_image reads it (EXIF orientation applied)


def read_example(path: str, name: str = "") -> Example:
    """An uploaded file as an :class:`Example` (``name``: the name the user gave it).

    Raises:
        AppError: the file is not an image that can be read.
    """
    name = name or os.path.basename(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        image = read_image(path, "BGR")
    except IMAGE_READ_ERRORS as e:
        raise AppError(
            f"{name} is not an image that can be read ({type(e).__name__}); upload a JPEG, PNG, "
            "BMP, TIFF or WebP image"
        ) from None
    if not name.lower().endswith(IMAGE_EXTENSIONS):  # a support folder lists images by name
        name = os.path.splitext(name)[0] + ".png"
        data = cv2.imencode(".png", image)[1].tobytes()
    return Example(name, data, image)


def format_box(box: Sequence[float]) -> str:
    """``[10, 20.5, 60, 80]`` -> ``"10, 20.5, 60, 80"``."""
    return ", ".join(f"{float(v):g}" for v in box)


def parse_box(text: str, where: str = "box") -> list[float]:
    """``"x0, y0, x1, y1"`` (pixels; brackets and spaces allowed) -> a box with area.

    Raises:
        AppError: not four numbers, or a box without area (x1 <= x0 or y1 <= y0).
    """
    parts = [p for p in re.split(r"[,\s]+", text.strip().strip("[]()")) if p]
    try:
        box = [float(p) for p in parts]
    except ValueError:
        box = []
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise AppError(
            f"{where}: {text.strip()!r} is not a box; write x0, y0, x1, y1 in the image's pixels "
            "or click two opposite corners of the object"
        )
    if box[2] <= box[0] or box[3] <= box[1]:
        raise AppError(
            f"{where}: the box {format_box(box)} has no area (it needs x1 > x0 and y1 > y0); "
            "click two opposite corners of the object"
        )
    return box


def parse_box_lines(text: str, names: Sequence[str] = ()) -> dict[str, _Boxes]:
    """Boxes typed one per line. With ``names`` (example file names), each line is
    ``"<file name>: x0, y0, x1, y1"`` and the boxes are returned per file name (several lines of
    one file: one shot each); without, a line is a box and all are returned under ``""``.

    Raises:
        AppError: a line that is not a box, or that names no example.
    """
    out: dict[str, _Boxes] = {}
    for n, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        name, box = "", line
        if names:
            name, sep, box = line.rpartition(":")
            name = name.strip()
            if not sep or name not in names:
                raise AppError(
                    f"box line {n} ({line.strip()!r}): start it with an example's file name and "
                    f"a colon ({', '.join(names[:5])})"
                )
        where = f"box line {n}" + (f" ({name})" if name else "")
        out.setdefault(name, []).append(parse_box(box, where))
    return out


def _box_lines(boxes: dict[str, _Boxes]) -> str:
    return "\n".join(
        f"{name}: {format_box(b)}" if name else format_box(b)
        for name, bs in boxes.items()
        for b in bs
    )


@dataclass
class Corners:
    """A box drawn with two clicks: the first click is one corner, the second the opposite."""

    pending: tuple[int, int] | None = None

    def click(self, x: float, y: float) -> list[float] | None:
        """Record a click at pixel (x, y); returns the box after the second click.

        Raises:
            AppError: the two clicks give a box without area (same row or column).
        """
        if self.pending is None:
            self.pending = (int(round(x)), int(round(y)))
            return None
        (x0, y0), self.pending = self.pending, None
        box = [float(min(x0, x)), float(min(y0, y)), float(max(x0, x)), float(max(y0, y))]
        if box[2] <= box[0] or box[3] <= box[1]:
            raise AppError(
                f"the two clicks give a box without area ({format_box(box)}); click two "
                "opposite corners of the object (top-left, then bottom-right)"
            )
        return box


def draw_boxes(
    image_bgr: np.ndarray, boxes: Sequence[Sequence[float]], pending: tuple[int, int] | None
) -> np.ndarray:
    """The boxes being drawn (numbered) and a first corner on a copy of the image; RGB."""
    out = np.ascontiguousarray(image_bgr.copy())
    h, w = out.shape[:2]
    t = max(1, round(min(h, w) / 240))
    for i, box in enumerate(boxes, start=1):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), (0, 0, 0), t + 2)
        cv2.rectangle(out, (x0, y0), (x1, y1), _BOX_COLOR, t)
        scale = max(0.4, min(h, w) / 640)
        org = (min(max(x0 + 2 * t, 0), w - 12), min(max(y0 + int(14 * scale) + t, 12), h - 2))
        cv2.putText(out, str(i), org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), t + 2)
        cv2.putText(out, str(i), org, cv2.FONT_HERSHEY_SIMPLEX, scale, _BOX_COLOR, t)
    if pending is not None:
        r = 4 * t + 2
        cv2.drawMarker(out, pending, (0, 0, 0), cv2.MARKER_CROSS, 2 * r, t + 2)
        cv2.drawMarker(out, pending, _BOX_COLOR, cv2.MARKER_CROSS, 2 * r, t)
    return np.ascontiguousarray(out[:, :, ::-1])


def _unique_name(name: str, used: set) -> str:
    stem, ext = os.path.splitext(name)
    out, n = name, 1
    while out in used:
        n += 1
        out = f"{stem}_{n}{ext}"
    used.add(out)
    return out


# ---------------------------------------------------------------- the class library
@dataclass
class LibraryClass:
    """One class: its prototype and, unless it came from a prototype file, its examples."""

    name: str
    source: str  # where it came from, for the class list
    prototype: Prototypes  # this class alone (id 0)
    examples: list[tuple[str, bytes, _Boxes | None]] = field(default_factory=list)
    crops: np.ndarray | None = None  # (K, 3, S, S) uint8 in the model's input format
    boxes: np.ndarray | None = None  # (K, 4) float32, in crop pixels
    serial: int = 0  # set by the library

    @property
    def shots(self) -> int:
        return len(self.crops) if self.crops is not None else 0


class ClassLibrary:
    """The classes the app detects, shared by every page of one running app.

    Args:
        detector: the model (any :class:`~fsod_deploy.detector.Detector` backend).
        backend: the backend's name, written to the COCO json's ``info`` as ``predict.py``
            writes ``--backend``.
    """

    def __init__(self, detector: Detector, backend: str = ""):
        self.detector = detector
        self.backend = backend
        self.lock = threading.RLock()  # the model and the classes, one caller at a time
        self.prototype_computations = 0  # how often the model encoded a class's supports
        self._classes: dict[str, LibraryClass] = {}
        self._cache: dict[tuple[str, str], Prototypes] = {}
        self._combined: tuple[tuple, Prototypes] | None = None
        self._serial = 0  # numbers the classes put in, so that a changed class set is noticed

    def __len__(self) -> int:
        return len(self._classes)

    def names(self) -> list[str]:
        """Class names in id order (sorted, as a support folder's classes are numbered)."""
        return sorted(self._classes)

    def table(self) -> list[list[Any]]:
        """One row per class: name, shots, where it came from."""
        with self.lock:
            return [
                [n, self._classes[n].shots or "-", self._classes[n].source] for n in self.names()
            ]

    # ------------------------------------------------------------ prototypes
    def crop(
        self, examples: Sequence[tuple[str, np.ndarray, _Boxes | None]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Support crops ``(K, 3, S, S)`` and boxes ``(K, 4)`` of ``(file name, BGR image,
        boxes or None)`` examples, in order, as the support folder reader crops them.

        Raises:
            AppError: a box without area inside its image.
        """
        d = self.detector
        crops, boxes = [], []
        for name, image, example_boxes in examples:
            try:
                shots = crop_image_examples(
                    image,
                    example_boxes,
                    size=d.support_size,
                    context=d.support_context,
                    image_format=d.input_format,
                    box_file="the drawn boxes",
                    file_name=name,
                )
            except SupportFolderError as e:
                raise AppError(str(e)) from None
            crops += [c for c, _ in shots]
            boxes += [b for _, b in shots]
        if not crops:
            raise AppError("no example: upload 1 or more example images of the class")
        return (
            np.ascontiguousarray(np.stack(crops).transpose(0, 3, 1, 2)),
            np.stack(boxes).astype(np.float32),
        )

    def prototype_of(self, name: str, crops: np.ndarray, boxes: np.ndarray) -> Prototypes:
        """The prototype (id 0) of one class's crops, computed once per weights and support
        set: the same crops again are not encoded again."""
        key = (
            self.detector.weights_fingerprint,
            support_fingerprint(crops, boxes, np.zeros(1, np.int64), len(crops)),
        )
        with self.lock:
            if key not in self._cache:
                self._cache[key] = self.detector.prototypes([(name, crops, boxes)])
                self.prototype_computations += 1
            return self._cache[key]

    def prototypes(self) -> Prototypes:
        """The prototypes of every class, ids 0, 1, ... in :meth:`names` order.

        Raises:
            AppError: there is no class.
        """
        with self.lock:
            names = self.names()
            if not names:
                raise AppError(
                    "no class to detect: add a class (example images with a box each) or load "
                    "a support folder first"
                )
            key = tuple((n, self._classes[n].serial) for n in names)
            if self._combined is not None and self._combined[0] == key:
                return self._combined[1]
            parts = []
            for i, name in enumerate(names):
                c = self._classes[name]
                p = c.prototype
                fp = p.support_fingerprint
                if c.crops is not None:  # as Detector.prototypes fingerprints class i
                    fp = support_fingerprint(c.crops, c.boxes, np.array([i]), len(c.crops))
                parts.append(
                    Prototypes(
                        np.array([i]),
                        p.rpn_kernels,
                        p.roi_prototypes,
                        [name],
                        p.weights_fingerprint,
                        fp,
                    )
                )
            combined = Prototypes.concatenate(parts)
            self._combined = (key, combined)
            return combined

    # ------------------------------------------------------------ adding and removing
    def _put(self, entry: LibraryClass) -> None:
        with self.lock:
            self._serial += 1
            entry.serial = self._serial
            self._classes[entry.name] = entry

    def add_class(
        self,
        name: str,
        examples: Sequence[tuple[Example, _Boxes | None]],
        *,
        source: str = "drawn examples",
    ) -> str:
        """Add a class from ``(example, boxes or None)`` pairs (None: the whole image is the
        object); returns the message for the page.

        Raises:
            AppError: a name that cannot be a folder name or is taken, no example, a box
                without area.
        """
        try:
            name = check_class_name(name)
        except SupportFolderError as e:
            raise AppError(str(e)) from None
        if name in self._classes:
            raise AppError(
                f"there is a class named {name!r}; remove it first or choose another name"
            )
        if not examples:
            raise AppError(f"class {name!r}: upload 1 or more example images of it first")
        used: set = set()
        named = [(_unique_name(ex.file_name, used), ex, boxes) for ex, boxes in examples]
        named.sort(key=lambda item: item[0])  # a support folder's order: by file name
        crops, boxes = self.crop([(f, ex.image, b) for f, ex, b in named])
        prototype = self.prototype_of(name, crops, boxes)
        saved = [
            (f, ex.data, [list(map(float, x)) for x in b] if b else None) for f, ex, b in named
        ]
        self._put(LibraryClass(name, source, prototype, saved, crops, boxes))
        return (
            f"Added class {name!r}: {_count(len(crops), 'shot')} from "
            f"{_count(len(named), 'image')}. {len(self)} in the library."
        )

    def remove_class(self, name: str) -> str:
        """Remove a class; returns the message for the page.

        Raises:
            AppError: no such class.
        """
        with self.lock:
            if name not in self._classes:
                raise AppError(f"there is no class named {name!r}; choose one of the list")
            del self._classes[name]
        return f"Removed class {name!r}. {_count(len(self), 'class')} left."

    # ------------------------------------------------------------ files
    def load_folder(self, folder: str) -> str:
        """Add the classes of a support folder (``predict.py --supports``' format), read by the
        same reader; a class of the same name is replaced. Returns the message for the page.

        Raises:
            AppError: what ``predict.py`` refuses (the message names the file and the fix).
        """
        folder = (folder or "").strip()
        if not folder:
            raise AppError("give the path of a support folder (one sub-folder of images per class)")
        try:
            classes = self.detector.load_support_folder(folder)
        except SupportFolderError as e:
            raise AppError(str(e)) from None
        replaced = []
        for name, crops, boxes in classes:
            class_dir = os.path.join(folder, name)
            boxes_of = read_box_file(class_dir)
            files = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
            examples = []
            for f in files:
                with open(os.path.join(class_dir, f), "rb") as fh:
                    examples.append((f, fh.read(), boxes_of.get(f)))
            prototype = self.prototype_of(name, crops, boxes)
            if name in self._classes:
                replaced.append(name)
            self._put(LibraryClass(name, f"folder {folder}", prototype, examples, crops, boxes))
        message = f"Loaded {_count(len(classes), 'class')} from {folder}: " + ", ".join(
            f"{n} ({_count(len(c), 'shot')})" for n, c, _ in classes
        )
        if replaced:
            message += f"; replaced the classes of the same name: {', '.join(replaced)}"
        return message + "."

    def save_folder(self, folder: str) -> str:
        """Write the classes as a support folder that ``predict.py --supports`` reads (a new or
        empty folder). Returns the message for the page.

        Raises:
            AppError: no class with examples, or the folder cannot be written.
        """
        folder = (folder or "").strip()
        if not folder:
            raise AppError("give the path of a new folder to save the classes to")
        with self.lock:
            savable = {
                n: self._classes[n].examples for n in self.names() if self._classes[n].examples
            }
            skipped = [n for n in self.names() if not self._classes[n].examples]
        if not savable:
            raise AppError(
                "no class with example images to save; classes from a prototype file have none"
                if skipped
                else "no class to save; add a class first"
            )
        try:
            save_support_folder(folder, savable)
        except SupportFolderError as e:
            raise AppError(str(e)) from None
        message = (
            f"Saved {_count(len(savable), 'class')} to {folder} "
            f"(tools/predict.py --supports {folder} reads it)"
        )
        if skipped:
            message += f"; not saved (from a prototype file, no images): {', '.join(skipped)}"
        return message + "."

    def load_prototype_file(self, path: str, name: str = "") -> str:
        """Add the classes of a prototype file (``predict.py``'s ``prototypes.npz`` or
        ``.pth``), refused unless computed with these weights; a class of the same name is
        replaced. Returns the message for the page.

        Raises:
            AppError: a file of other weights or another model, or not a prototype file.
        """
        name = name or os.path.basename(path)
        try:
            with self.lock:
                loaded = self.detector.load_prototypes(path)
        except PrototypeFileError as e:
            raise AppError(str(e).replace(path, name)) from None
        names = []
        for i in range(len(loaded)):
            one = Prototypes(
                np.zeros(1, np.int64),
                loaded.rpn_kernels[i : i + 1],
                loaded.roi_prototypes[i : i + 1],
                [loaded.name(i)],
                loaded.weights_fingerprint,
                loaded.support_fingerprint,
            )
            try:
                class_name = check_class_name(loaded.name(i))
            except SupportFolderError as e:
                raise AppError(f"{name}: {e}") from None
            self._put(LibraryClass(class_name, f"prototype file {name}", one))
            names.append(class_name)
        return f"Loaded {_count(len(names), 'class')} from {name}: {', '.join(names)}."

    def save_prototypes(self, path: str) -> str:
        """Write the prototypes of every class (``.npz``, ``predict.py --prototypes`` reads it);
        returns ``path``."""
        self.prototypes().save(path)
        return path


# ---------------------------------------------------------------- one user's page
class View(NamedTuple):
    """What the page shows after an action."""

    pictures: list[tuple[np.ndarray, str]]  # (RGB image, caption)
    rows: list[list[Any]]  # the table: image, class, score, x0, y0, x1, y1
    data: dict[str, Any]  # the same, machine-readable (JSON)
    message: str


@dataclass
class _Detection:
    run: int
    writer: PredictionWriter
    images: list[tuple[str, np.ndarray, Detections]]  # (file name, BGR image, detections)


@dataclass
class _Count:
    run: int
    example: Example
    boxes: _Boxes
    detections: Detections


def _detection_rows(
    file_name: str, dets: Detections, keep: np.ndarray, names: Sequence[str]
) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    rows, items = [], []
    for box, score, c in zip(dets.boxes[keep], dets.scores[keep], dets.class_ids[keep]):
        label = names[int(c)] if int(c) < len(names) else f"class {int(c)}"
        box = [float(v) for v in box]
        rows.append([file_name, label, round(float(score), 3), *(round(v, 1) for v in box)])
        items.append({"label": label, "class_id": int(c), "score": float(score), "box": box})
    return rows, items


class Session:
    """One page's state: the example images being boxed, the last detection and the last count.

    Args:
        classes: the class library (shared by every page).
        workdir: where this page's files go (the COCO json of each detection); removed by
            :meth:`close`.
    """

    def __init__(self, classes: ClassLibrary, workdir: str | None = None):
        self.classes = classes
        self.workdir = workdir or tempfile.mkdtemp(prefix="fsod_app_")
        os.makedirs(self.workdir, exist_ok=True)
        self.model_runs = 0  # images this page ran the model on
        self._lock = threading.RLock()
        self._runs = 0
        self.draft: list[Example] = []
        self._draft_corners: dict[str, Corners] = {}
        self.detection: _Detection | None = None
        self.count_example: Example | None = None
        self._count_corners = Corners()
        self.counted: _Count | None = None

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _next_run(self) -> int:
        self._runs += 1
        return self._runs

    # ------------------------------------------------------------ drafting a class
    def set_examples(self, paths: Sequence[str], names: Sequence[str] = ()) -> tuple[list, str]:
        """Uploaded example images of a new class; returns their file names and a message
        (unreadable files are left out and named in it).

        Raises:
            AppError: none of the files is an image.
        """
        with self._lock:
            names = list(names) or [os.path.basename(p) for p in paths]
            examples, bad, used = [], [], set()
            for path, name in zip(paths, names):
                try:
                    ex = read_example(path, name)
                except AppError as e:
                    bad.append(str(e))
                    continue
                ex.file_name = _unique_name(ex.file_name, used)
                examples.append(ex)
            self.draft, self._draft_corners = examples, {}
            if bad and not examples:
                raise AppError(
                    bad[0] if len(bad) == 1 else f"none of the files is an image: {bad[0]}"
                )
            message = (
                f"{_count(len(examples), 'example image')}: click two opposite corners of the "
                "object on each (no box: the whole image is the object), then add the class."
            )
            if bad:
                message += " Left out: " + " ".join(bad)
            return [ex.file_name for ex in examples], message if examples else ""

    def _draft(self, name: str) -> Example:
        for ex in self.draft:
            if ex.file_name == name:
                return ex
        raise AppError("upload example images of the class first (then click on them)")

    def show_example(self, name: str, boxes_text: str) -> np.ndarray:
        """The example ``name`` with its boxes drawn (RGB).

        Raises:
            AppError: no such example, or the box text is not boxes.
        """
        with self._lock:
            ex = self._draft(name)
            boxes = parse_box_lines(boxes_text, [e.file_name for e in self.draft])
            pending = self._draft_corners.get(name, Corners()).pending
            return draw_boxes(ex.image, boxes.get(name, []), pending)

    def click_example(
        self, name: str, x: float, y: float, boxes_text: str
    ) -> tuple[np.ndarray, str, str]:
        """A click on example ``name`` at pixel (x, y): the first corner, or with the second
        the example's box (replacing the one it had). Returns the drawn example, the new box
        text and a message.

        Raises:
            AppError: no such example, the box text is not boxes, or a box without area.
        """
        with self._lock:
            ex = self._draft(name)
            names = [e.file_name for e in self.draft]
            boxes = parse_box_lines(boxes_text, names)
            corners = self._draft_corners.setdefault(name, Corners())
            box = corners.click(x, y)
            if box is None:
                x0, y0 = corners.pending
                message = f"{name}: first corner at ({x0}, {y0}); click the opposite corner"
            else:
                boxes[name] = [box]
                boxes = {n: boxes[n] for n in names if n in boxes}
                message = f"{name}: box {format_box(box)}"
            return (
                draw_boxes(ex.image, boxes.get(name, []), corners.pending),
                _box_lines(boxes),
                message,
            )

    def add_drafted_class(self, name: str, boxes_text: str) -> str:
        """Add the uploaded examples as class ``name``, each with its boxes of ``boxes_text``
        (none: the whole image); returns the message.

        Raises:
            AppError: see :meth:`ClassLibrary.add_class`; the box text is not boxes.
        """
        with self._lock:
            if not self.draft:
                raise AppError("upload 1 or more example images of the class first")
            boxes = parse_box_lines(boxes_text, [e.file_name for e in self.draft])
            message = self.classes.add_class(
                name, [(ex, boxes.get(ex.file_name)) for ex in self.draft]
            )
            self.draft, self._draft_corners = [], {}
            return message

    # ------------------------------------------------------------ detection
    def detect(
        self, paths: Sequence[str], names: Sequence[str] = (), threshold: float = 0.3
    ) -> View:
        """Run the model on uploaded images with every class; unreadable files are skipped and
        named in the message (and in the COCO json's ``info``, as ``predict.py`` lists them).

        Raises:
            AppError: no class, no upload, or no upload that is an image.
        """
        with self._lock:
            prototypes = self.classes.prototypes()
            if not paths:
                raise AppError("upload one or more images to detect the classes in")
            names = list(names) or [os.path.basename(p) for p in paths]
            run = self._runs + 1  # counted once it detected something
            writer = PredictionWriter(
                os.path.join(self.workdir, f"detect_{run}"), prototypes.class_names, threshold
            )
            images, bad = [], []
            for path, name in zip(paths, names):
                try:
                    image = read_example(path, name).image
                except AppError as e:
                    bad.append(str(e))
                    writer.unreadable.append(name)
                    continue
                with self.classes.lock:
                    dets = self.classes.detector.detect(image, prototypes)
                self.model_runs += 1
                writer.record(name, image.shape, dets)
                images.append((name, image, dets))
            if not images:
                raise AppError(
                    bad[0] if len(bad) == 1 else f"none of the uploads is an image: {bad[0]}"
                )
            writer.finish(prototypes.class_ids.tolist(), {"backend": self.classes.backend})
            self.detection = _Detection(self._next_run(), writer, images)
            view = self.redraw(threshold)
            if bad:
                view = view._replace(message=view.message + " Skipped: " + " ".join(bad))
            return view

    def redraw(self, threshold: float) -> View:
        """The last detection drawn at another threshold, without running the model."""
        with self._lock:
            d = self.detection
            if d is None:
                return View([], [], {}, "")
            d.writer.threshold = float(threshold)
            names = d.writer.class_names
            pictures, rows, images, shown = [], [], [], 0
            for name, image, dets in d.images:
                keep = dets.scores >= threshold
                shown += int(keep.sum())
                drawn = d.writer.draw(image, dets)[:, :, ::-1]
                pictures.append(
                    (np.ascontiguousarray(drawn), f"{name}: {_count(int(keep.sum()), 'detection')}")
                )
                r, items = _detection_rows(name, dets, keep, names)
                rows += r
                h, w = image.shape[:2]
                images.append({"file_name": name, "width": w, "height": h, "detections": items})
            data = {
                "run": d.run,
                "model_runs": self.model_runs,
                "threshold": float(threshold),
                "classes": list(names),
                "images": images,
            }
            message = (
                f"{_count(shown, 'detection')} with a score of at least {threshold:.2f} in "
                f"{_count(len(d.images), 'image')} ({_count(len(names), 'class')})."
            )
            if not shown:
                message += " " + d.writer.nothing_drawn("the threshold") + "."
            return View(pictures, rows, data, message)

    def coco_json(self) -> str:
        """The file of the last detection's COCO dataset: what ``predict.py`` writes to
        ``detections.json`` (every detection, whatever the threshold).

        Raises:
            AppError: nothing detected yet.
        """
        if self.detection is None:
            raise AppError("detect first: the COCO json holds the detections of the last run")
        return os.path.join(self.detection.writer.output, "detections.json")

    # ------------------------------------------------------------ counting in one image
    def set_count_image(self, path: str, name: str = "") -> np.ndarray:
        """The image to count in (its boxes and last count are dropped); returns it (RGB).

        Raises:
            AppError: not an image.
        """
        with self._lock:
            self.count_example, self._count_corners, self.counted = None, Corners(), None
            self.count_example = read_example(path, name)
            return draw_boxes(self.count_example.image, [], None)

    def _count_image(self) -> Example:
        if self.count_example is None:
            raise AppError("upload the image to count in first")
        return self.count_example

    def click_count(self, x: float, y: float, boxes_text: str) -> tuple[np.ndarray, str, str]:
        """A click at pixel (x, y) of the image to count in: a first corner, or with the
        second a new example box. Returns the drawn image, the new box text and a message.

        Raises:
            AppError: no image, the box text is not boxes, a box without area, or a box past
                :data:`MAX_COUNT_EXAMPLES`.
        """
        with self._lock:
            ex = self._count_image()
            boxes = parse_box_lines(boxes_text).get("", [])
            if self._count_corners.pending is None and len(boxes) >= MAX_COUNT_EXAMPLES:
                raise AppError(
                    f"{MAX_COUNT_EXAMPLES} example boxes at most; clear them to draw others"
                )
            box = self._count_corners.click(x, y)
            pending = self._count_corners.pending
            if box is None:
                message = f"first corner at ({pending[0]}, {pending[1]}); click the opposite corner"
            else:
                boxes.append(box)
                message = f"example {len(boxes)}: box {format_box(box)}; count, or draw another"
            return draw_boxes(ex.image, boxes, pending), _box_lines({"": boxes}), message

    def clear_count_boxes(self) -> tuple[np.ndarray, str]:
        """Drop the example boxes and a first corner; returns the image and the empty text."""
        with self._lock:
            self._count_corners = Corners()
            return draw_boxes(self._count_image().image, [], None), ""

    def count_in_image(self, boxes_text: str, threshold: float = 0.3) -> View:
        """Count the objects like the 1-3 example boxes in the image they were drawn on: the
        boxes' crops are the supports of one class; its detections in the image are counted.

        Raises:
            AppError: no image, not 1-3 boxes, a box without area inside the image.
        """
        with self._lock:
            ex = self._count_image()
            boxes = parse_box_lines(boxes_text).get("", [])
            if not 1 <= len(boxes) <= MAX_COUNT_EXAMPLES:
                raise AppError(
                    f"draw 1 to {MAX_COUNT_EXAMPLES} boxes around examples of the object "
                    f"(two clicks each), not {len(boxes)}"
                )
            crops, crop_boxes = self.classes.crop([(ex.file_name, ex.image, boxes)])
            prototype = self.classes.prototype_of("object", crops, crop_boxes)
            with self.classes.lock:
                dets = self.classes.detector.detect(ex.image, prototype)
            self.model_runs += 1
            self.counted = _Count(self._next_run(), ex, boxes, dets)
            return self.recount(threshold)

    def recount(self, threshold: float) -> View:
        """The last count at another threshold, without running the model."""
        with self._lock:
            c = self.counted
            if c is None:
                return View([], [], {}, "")
            keep = c.detections.scores >= threshold
            n = int(keep.sum())
            d = c.detections
            drawn = draw_detections(
                c.example.image, d.boxes[keep], d.scores[keep], d.class_ids[keep], ["object"],
                channel_order="BGR",
            )  # fmt: skip
            picture = draw_boxes(drawn, c.boxes, None)
            rows, items = _detection_rows(c.example.file_name, d, keep, ["object"])
            data = {
                "run": c.run,
                "model_runs": self.model_runs,
                "threshold": float(threshold),
                "file_name": c.example.file_name,
                "examples": c.boxes,
                "count": n,
                "detections": items,
            }
            message = (
                f"{n} {'object' if n == 1 else 'objects'} like the "
                f"{_count(len(c.boxes), 'example')} with a score of at least {threshold:.2f}."
            )
            return View([(picture, f"{c.example.file_name}: {n}")], rows, data, message)

    def add_counted_class(self, name: str, boxes_text: str) -> str:
        """Add the image to count in, with its example boxes, as class ``name``.

        Raises:
            AppError: no image, no box, see :meth:`ClassLibrary.add_class`.
        """
        with self._lock:
            ex = self._count_image()
            boxes = parse_box_lines(boxes_text).get("", [])
            if not boxes:
                raise AppError("draw 1 or more boxes around examples of the object first")
            return self.classes.add_class(name, [(ex, boxes)], source="boxes on one image")
