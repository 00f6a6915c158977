"""The images a user names: files, folders (searched recursively) and glob patterns.

Torch-free (standard library only), so the exported runtime, the app and ``tools/predict.py``
find their input images the same way. Files that are not images (by extension) are not dropped
without a word: :func:`find_images` returns them so that the caller lists them.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

__all__ = ["IMAGE_EXTENSIONS", "InputError", "NoImagesError", "find_images"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class InputError(ValueError):
    """An input the user named cannot be used; the message is one line naming it and the fix."""


class NoImagesError(InputError):
    """Nothing the user named is an image file."""


def _files_of(item: str) -> list[str]:
    if os.path.isdir(item):
        return [os.path.join(d, f) for d, _, files in sorted(os.walk(item)) for f in sorted(files)]
    if os.path.isfile(item):
        return [item]
    matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
    if not matches:
        raise InputError(f"{item!r}: no such file or folder, and no file matches it as a pattern")
    return matches


def find_images(
    inputs: Sequence[str],
    *,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    option: str = "--input",
) -> tuple[list[str], list[str]]:
    """The image files of ``inputs`` (files, folders searched recursively, glob patterns), in
    the order given (sorted within a folder or pattern), without duplicates; and the files
    found that are not images (by extension, case-insensitive), for the caller to list.

    Args:
        inputs: what the user named.
        extensions: the image file extensions (lower case, with the dot).
        option: the option's name in messages.

    Raises:
        InputError: an input that is no file or folder and matches no file.
        NoImagesError: no image file among the files found (the message says how many other
            files there were, and a few of them).
    """
    if not inputs:
        raise NoImagesError(f"{option}: no input given; name image files, folders or patterns")
    extensions = tuple(e.lower() for e in extensions)
    images: list[str] = []
    others: list[str] = []
    for item in inputs:
        try:
            files = _files_of(item)
        except InputError as e:
            raise InputError(f"{option} {e}") from None
        for path in files:
            (images if path.lower().endswith(extensions) else others).append(path)
    images, others = list(dict.fromkeys(images)), list(dict.fromkeys(others))
    if not images:
        found = (
            f"only {len(others)} other file{'s' if len(others) > 1 else ''} "
            f"({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''})"
            if others
            else "no file"
        )
        raise NoImagesError(
            f"{option} {' '.join(inputs)}: no image file ({', '.join(extensions)}), {found}; "
            "name image files or folders that hold them"
        )
    return images, others
