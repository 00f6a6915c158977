"""Declare any COCO-format dataset few-shot: a base/novel class split plus base/novel variants.

``register_fewshot_coco("mydata", json, images, base_classes=[...], novel_classes=[...])``
registers three datasets in detectron2's catalogs:

* ``mydata``         all annotations of the split's classes (evaluation on all classes);
* ``mydata_base``    base-class annotations only (base training, the TFA/FewX convention;
                     novel objects in those images are unlabelled background);
* ``mydata_novel``   novel-class annotations only (novel evaluation / K-shot supports).

Contiguous class ids are the same in all three (and in every K-shot file prepared from the same
annotation file): all split classes sorted by dataset category id. ``base_ids``/``novel_ids`` in
the metadata are contiguous ids; ``gt_classes`` and the mapper outputs use the same ids.

The same can be done from a config without Python via ``cfg.FSOD.REGISTER``
(see :func:`register_from_config`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ...utils.files import datasets_root, expand_path
from ..splits import resolve_classes

logger = logging.getLogger(__name__)

__all__ = [
    "SUBSETS",
    "datasets_root",
    "load_fewshot_coco_json",
    "parse_register_entry",
    "register_fewshot_coco",
    "register_fewshot_dataset",
    "register_from_config",
    "split_metadata",
    "subset_class_ids",
]

# Which annotations a registered variant keeps, and the name suffix of each variant.
SUBSETS = {"all": "", "base": "_base", "novel": "_novel"}


def _read_json(json_file: str, dataset_name: str) -> dict[str, Any]:
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"Annotation file of dataset '{dataset_name}' not found: {json_file} "
            f"(DETECTRON2_DATASETS={datasets_root()!r}; see datasets/README.md for the layout "
            "and the commands that prepare it)."
        )
    try:
        with open(json_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"Annotation file {json_file} (dataset '{dataset_name}') is not JSON: {e}"
        ) from e
    if not isinstance(data, dict):
        raise ValueError(f"Annotation file {json_file} is not a COCO-format JSON object")
    for field in ("images", "annotations", "categories"):
        if not isinstance(data.get(field), list):
            raise ValueError(
                f"Annotation file {json_file} (dataset '{dataset_name}') has no list field "
                f"'{field}'; expected COCO instances format."
            )
    return data


def _normalize_categories(categories: Sequence[dict | str]) -> list[dict[str, Any]]:
    """Accept ``[{"id", "name"}, ...]`` or a list of names (ids 1..n, COCO convention)."""
    out = []
    for i, c in enumerate(categories):
        if isinstance(c, str):
            out.append({"id": i + 1, "name": c})
        else:
            out.append({"id": int(c["id"]), "name": str(c["name"])})
    ids = [c["id"] for c in out]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate category ids in {ids}")
    return sorted(out, key=lambda c: c["id"])


def split_metadata(
    categories: Sequence[dict | str],
    base_classes: str | Iterable[str | int],
    novel_classes: str | Iterable[str | int] | None,
    *,
    source: str = "",
) -> dict[str, Any]:
    """Metadata fields of a base/novel split of ``categories``.

    ``novel_classes=None`` means "every category that is not base". Categories in neither list
    are not part of the dataset (their annotations are dropped at load and counted).
    """
    cats = _normalize_categories(categories)
    base = resolve_classes(base_classes, cats, source=source, what="base classes")
    if novel_classes is None:
        novel = [c["id"] for c in cats if c["id"] not in set(base)]
    else:
        novel = resolve_classes(novel_classes, cats, source=source, what="novel classes")
    both = sorted(set(base) & set(novel))
    if both:
        raise ValueError(f"classes {both} are both base and novel in the split of {source}")
    if not base and not novel:
        raise ValueError(f"empty few-shot split for {source}")
    keep = sorted(set(base) | set(novel))
    names = {c["id"]: c["name"] for c in cats}
    id_map = {cid: i for i, cid in enumerate(keep)}
    return {
        "thing_classes": [names[c] for c in keep],
        "thing_dataset_id_to_contiguous_id": id_map,
        "base_classes": [names[c] for c in base],
        "novel_classes": [names[c] for c in novel],
        "base_ids": [id_map[c] for c in base],
        "novel_ids": [id_map[c] for c in novel],
    }


def subset_class_ids(metadata: Any, subset: str | None = None) -> list[int]:
    """Contiguous ids of the classes whose annotations a registered dataset keeps, sorted:
    ``base_ids`` for the ``_base`` variant, ``novel_ids`` for ``_novel``, every class of
    ``thing_classes`` otherwise (also for a dataset registered without a few-shot split).

    ``subset`` ("all", "base" or "novel") defaults to the dataset's own (``metadata.subset``,
    else "all"). The one place of this rule: loaders, config checks, the trainer's choice of
    prototypes and the evaluator's groups all call it.
    """
    subset = metadata.get("subset", "all") if subset is None else subset
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {sorted(SUBSETS)}, not {subset!r}")
    if subset == "all":
        return list(range(len(metadata.get("thing_classes", []))))
    ids = metadata.get(f"{subset}_ids")
    if ids is None:
        raise ValueError(
            f"dataset {metadata.get('name', '?')!r} has no base/novel split ({subset}_ids): "
            "register it with fsod_d2.data.register_fewshot_coco"
        )
    return sorted(int(c) for c in ids)


def _box_is_valid(bbox_xyxy: Sequence[float], width: int | None, height: int | None) -> bool:
    """Positive area, also after clipping to the image when its size is known."""
    x0, y0, x1, y1 = (float(v) for v in bbox_xyxy)
    if width and height:
        x0, x1 = max(x0, 0.0), min(x1, float(width))
        y0, y1 = max(y0, 0.0), min(y1, float(height))
    return x1 > x0 and y1 > y0


def clean_records(
    records: list[dict[str, Any]], keep_ids: Iterable[int], dataset_name: str, source: str
) -> list[dict[str, Any]]:
    """Keep the subset's annotations, drop (and count) degenerate boxes; log one summary.

    Annotations must already carry contiguous ``category_id`` (or -1 for "not in the split").
    """
    keep = set(keep_ids)
    counts: Counter = Counter()
    for r in records:
        kept = []
        for ann in r["annotations"]:
            cid = ann["category_id"]
            if cid < 0:
                counts["not in the split"] += 1
                continue
            if cid not in keep:
                counts["other subset"] += 1
                continue
            xyxy = BoxMode.convert(ann["bbox"], ann["bbox_mode"], BoxMode.XYXY_ABS)
            if not _box_is_valid(xyxy, r.get("width"), r.get("height")):
                counts["zero/negative-area box"] += 1
                continue
            kept.append(ann)
        r["annotations"] = kept
        counts["annotations"] += len(kept)
    dropped = {k: v for k, v in counts.items() if k not in ("annotations", "other subset")}
    logger.info(
        "Dataset '%s': %d images, %d annotations from %s%s",
        dataset_name,
        len(records),
        counts["annotations"],
        source,
        f" ({counts['other subset']} of other classes left out)" if counts["other subset"] else "",
    )
    if dropped:
        logger.warning(
            "Dataset '%s': dropped annotations: %s",
            dataset_name,
            ", ".join(f"{v} {k}" for k, v in sorted(dropped.items())),
        )
    return records


def load_fewshot_coco_json(json_file: str, image_root: str, dataset_name: str) -> list[dict]:
    """Load a COCO JSON into detectron2 dicts for a registered few-shot dataset.

    Category ids are mapped with the dataset's ``thing_dataset_id_to_contiguous_id``;
    annotations outside the variant's subset are left out; zero/negative-area boxes and
    annotations with an unknown category id are dropped and counted; crowd flags are kept.
    """
    meta = MetadataCatalog.get(dataset_name)
    data = _read_json(json_file, dataset_name)
    json_names = {int(c["id"]): c["name"] for c in data["categories"]}
    id_map = meta.thing_dataset_id_to_contiguous_id
    mismatched = [
        (did, meta.thing_classes[cid], json_names.get(did))
        for did, cid in id_map.items()
        if json_names.get(did) != meta.thing_classes[cid]
    ]
    if mismatched:
        raise ValueError(
            f"Categories of {json_file} do not match the registration of '{dataset_name}' "
            f"(id, registered name, name in file): {mismatched[:5]}"
        )

    images = {}
    for im in data["images"]:
        rec = {"file_name": os.path.join(image_root, im["file_name"]), "image_id": im["id"]}
        if im.get("height") and im.get("width"):  # else detectron2 fills them from the image
            rec["height"], rec["width"] = int(im["height"]), int(im["width"])
        rec["annotations"] = []
        images[im["id"]] = rec
    unknown_cat, orphans = 0, 0
    for ann in data["annotations"]:
        rec = images.get(ann.get("image_id"))
        if rec is None:
            orphans += 1
            continue
        did = int(ann["category_id"])
        if did not in json_names:
            unknown_cat += 1
            continue
        bbox = ann.get("bbox")
        if bbox is None or len(bbox) != 4:
            raise ValueError(
                f"Annotation {ann.get('id')} of image {ann['image_id']} in {json_file} has no "
                "valid 'bbox' [x, y, w, h]."
            )
        rec["annotations"].append(
            {
                "bbox": [float(v) for v in bbox],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": id_map.get(did, -1),
                "iscrowd": int(ann.get("iscrowd", 0)),
            }
        )
    if unknown_cat or orphans:
        what = [(unknown_cat, "with a category id missing from 'categories'"),
                (orphans, "of image ids missing from 'images'")]  # fmt: skip
        logger.warning(
            "Dataset '%s': %s: dropped annotations %s",
            dataset_name,
            json_file,
            "; ".join(f"{n} {w}" for n, w in what if n),
        )
    records = [images[k] for k in sorted(images, key=lambda x: (str(type(x)), x))]
    return clean_records(records, subset_class_ids(meta), dataset_name, json_file)


def _same_registration(name: str, fields: dict[str, Any]) -> bool:
    meta = MetadataCatalog.get(name).as_dict()
    return all(meta.get(k) == v for k, v in fields.items())


def register_fewshot_dataset(
    name: str,
    loader: Callable[[str], list[dict]],
    metadata: dict[str, Any],
    *,
    variants: bool = True,
    overwrite: bool = False,
) -> list[str]:
    """Register ``name`` (+ ``_base``/``_novel``) with a loader ``loader(variant_name)``.

    ``metadata`` must contain the fields of :func:`split_metadata`. Registering the same name
    again with the same metadata is a no-op; with different metadata it is an error unless
    ``overwrite``.
    """
    names = []
    for subset, suffix in SUBSETS.items():
        if subset != "all" and not variants:
            continue
        vname = name + suffix
        fields = dict(metadata, subset=subset)
        if subset != "all":
            fields["parent"] = name
            # Without json_file, detectron2's COCOEvaluator evaluates against exactly the kept
            # annotations (it converts the dicts) instead of the full file.
            if "json_file" in fields:
                fields["source_json_file"] = fields.pop("json_file")
        if vname in DatasetCatalog:
            if _same_registration(vname, fields):
                names.append(vname)
                continue
            if not overwrite:
                raise ValueError(
                    f"Dataset '{vname}' is already registered with a different few-shot "
                    "definition; choose another name (or overwrite=True)."
                )
            DatasetCatalog.remove(vname)
            MetadataCatalog.remove(vname)
        DatasetCatalog.register(vname, lambda vname=vname: loader(vname))
        MetadataCatalog.get(vname).set(**fields)
        names.append(vname)
    return names


def register_fewshot_coco(
    name: str,
    json_file: str,
    image_root: str,
    base_classes: str | Sequence[str | int],
    novel_classes: str | Sequence[str | int] | None = None,
    *,
    categories: Sequence[dict | str] | None = None,
    variants: bool = True,
    evaluator_type: str = "coco",
    overwrite: bool = False,
    **extra_metadata: Any,
) -> list[str]:
    """Declare a COCO-format dataset few-shot; returns the registered dataset names.

    Args:
        name: dataset name; ``name + "_base"`` and ``name + "_novel"`` are registered too
            (unless ``variants=False``).
        json_file: COCO instances JSON.
        image_root: directory that ``file_name`` in the JSON is relative to.
        base_classes: base class names or dataset category ids (list or comma-separated).
        novel_classes: novel class names or ids; ``None`` = all other categories.
        categories: the file's ``[{"id", "name"}, ...]`` if known; otherwise they are read from
            ``json_file`` now (so a missing file or an unknown class fails here, at start).
        evaluator_type: detectron2 evaluator type stored in the metadata.
        overwrite: replace an existing registration of the same name.
        extra_metadata: more metadata fields.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if categories is None:
        categories = _read_json(json_file, name)["categories"]
    metadata = split_metadata(categories, base_classes, novel_classes, source=json_file)
    metadata.update(
        json_file=json_file,
        image_root=image_root,
        evaluator_type=evaluator_type,
        **extra_metadata,
    )
    return register_fewshot_dataset(
        name,
        lambda vname: load_fewshot_coco_json(json_file, image_root, vname),
        metadata,
        variants=variants,
        overwrite=overwrite,
    )


_ENTRY_KEYS = {"name", "json", "images", "base", "novel", "split", "kshots"}
_KSHOT_FILE = re.compile(r"_(\d+)shot_seed(\d+)\.json$")


def parse_register_entry(entry: str) -> dict[str, str]:
    """Parse ``"name=<n>;json=<path>;images=<dir>;base=<c1,c2>;novel=<c3,...>"``.

    ``novel`` is optional (default: every non-base category). Instead of ``base``/``novel``,
    ``split=<file.json>`` reads both from a file ``{"base": [...], "novel": [...]}`` shared by the
    entries of one dataset. ``kshots=<dir>`` also registers every ``*_<K>shot_seed<S>.json`` in
    that folder (``tools/prepare_fewshot_splits.py json`` output) as ``<name>_<K>shot_seed<S>``.
    Paths may use ``$VARS`` and ``~``; ``$DETECTRON2_DATASETS`` is the datasets root (default
    ``datasets``) also when the variable is unset.
    """
    fields: dict[str, str] = {}
    for part in entry.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in _ENTRY_KEYS:
            raise ValueError(
                f"Bad FSOD.REGISTER entry {entry!r}: '{part}' is not one of "
                f"{sorted(_ENTRY_KEYS)} = value"
            )
        fields[key] = value.strip()
    missing = [k for k in ("name", "json", "images") if not fields.get(k)]
    if not fields.get("base") and not fields.get("split"):
        missing.append("base (or split)")
    if missing:
        raise ValueError(f"FSOD.REGISTER entry {entry!r} lacks {missing}")
    if fields.get("split") and (fields.get("base") or fields.get("novel")):
        raise ValueError(
            f"FSOD.REGISTER entry {entry!r}: give the classes either as split=<file> or as "
            "base=/novel=, not both"
        )
    for k in ("json", "images", "split", "kshots"):
        if k in fields:
            fields[k] = expand_path(fields[k])
    if fields.get("split"):
        fields.update(_read_split_file(fields["split"]))
    return fields


def _read_split_file(path: str) -> dict[str, str]:
    """``{"base": [...], "novel": [...]}`` (names or ids; ``novel`` optional) -> entry fields."""
    try:
        with open(path, encoding="utf-8") as f:
            split = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"FSOD.REGISTER split file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"FSOD.REGISTER split file {path} is not valid JSON: {e}") from None
    if not isinstance(split, dict) or not isinstance(split.get("base"), list):
        raise ValueError(
            f'FSOD.REGISTER split file {path} must hold {{"base": [names or ids], '
            '"novel": [...]} ("novel" optional: every other class)'
        )
    return {k: ",".join(str(c) for c in split.get(k) or []) for k in ("base", "novel")}


def kshot_files(folder: str) -> list[tuple[int, int, str]]:
    """``(K, seed, path)`` of every ``*_<K>shot_seed<S>.json`` in ``folder``, sorted."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"FSOD.REGISTER kshots folder {folder} does not exist (write it with "
            "tools/prepare_fewshot_splits.py json --output-dir)"
        )
    found = []
    for file_name in sorted(os.listdir(folder)):
        m = _KSHOT_FILE.search(file_name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), os.path.join(folder, file_name)))
    if not found:
        raise FileNotFoundError(
            f"FSOD.REGISTER kshots folder {folder} has no *_<K>shot_seed<S>.json"
        )
    return found


def register_from_config(cfg: CfgNode) -> list[str]:
    """Register every dataset declared in ``cfg.FSOD.REGISTER``; returns all registered names.

    Idempotent, so the trainer, tools and :func:`build_episodic_train_loader` may all call it.
    Example (command line)::

        FSOD.REGISTER "['name=parts;json=parts.json;images=img;base=bolt,nut;novel=gear']"
    """
    names = []
    for entry in cfg.FSOD.REGISTER:
        f = parse_register_entry(entry)
        kshots = [
            (f"{f['name']}_{k}shot_seed{seed}", path)
            for k, seed, path in (kshot_files(f["kshots"]) if f.get("kshots") else [])
        ]
        for name, json_file in [(f["name"], f["json"])] + kshots:
            if name in DatasetCatalog and MetadataCatalog.get(name).get("register_entry") == entry:
                # already registered from this very entry: do not read the file again
                names += [name + s for s in SUBSETS.values() if name + s in DatasetCatalog]
                continue
            names += register_fewshot_coco(
                name,
                json_file,
                f["images"],
                f["base"],
                f.get("novel") or None,
                register_entry=entry,
            )
    return names
