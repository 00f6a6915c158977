"""All fsod-d2 config keys, and the one function that builds a config.

``add_fsod_config`` is the only place the keys are declared. It adds keys to the cfg it is given
(never to detectron2's global ``_C``). Episode and data keys live under ``cfg.FSOD``; model keys
under ``cfg.MODEL.FSOD``. :func:`setup_cfg` builds the config of a file and command-line
overrides; the tools, the trainer, the benchmarks and the tests all use it.
"""

import difflib
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

logger = logging.getLogger(__name__)

__all__ = ["ConfigKeyError", "ConfigLoadError", "add_fsod_config", "setup_cfg"]

# the checkout's configs/ (absent when the package is installed without its checkout)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigLoadError(ValueError):
    """A config file or override that cannot be merged: a file that does not exist, invalid
    YAML, a key that does not exist (with the closest existing key), a value of the wrong type,
    a bad ``FSOD.REGISTER`` entry. The message is one line naming the file or override and the
    fix."""


class ConfigKeyError(ConfigLoadError, KeyError):
    """A key that does not exist or was renamed (a KeyError, as yacs raises for these)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def setup_cfg(config_file: str = "", opts: Sequence[str] = (), *, freeze: bool = True) -> CN:
    """detectron2's defaults + fsod keys, merged with ``config_file`` and ``opts`` (KEY VALUE
    ...); the datasets declared in ``FSOD.REGISTER`` are registered. Without CUDA, a ``cuda``
    MODEL.DEVICE falls back to the CPU (with a warning; configs written for the CPU say
    ``cpu``). Returns the cfg, frozen unless ``freeze=False`` (call detectron2's
    ``default_setup`` on it for logging/output).

    Raises:
        ConfigLoadError: the file or an override cannot be merged (one line, see the class).
    """
    from .data.datasets import register_from_config  # the data package imports this module

    cfg = add_fsod_config(get_cfg())
    if config_file:
        _merge_file(cfg, str(config_file))
    _merge_opts(cfg, list(opts or ()))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is not available: using the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    elif cfg.MODEL.DEVICE == "cpu" and torch.cuda.is_available():
        logger.info("MODEL.DEVICE is cpu; MODEL.DEVICE cuda runs this config on the GPU")
    try:
        register_from_config(cfg)
    except (ValueError, FileNotFoundError) as e:  # a bad entry, a missing annotation file
        text = str(e)
        raise ConfigLoadError(
            text if "FSOD.REGISTER" in text else f"FSOD.REGISTER: {text}"
        ) from None
    if freeze:
        cfg.freeze()
    return cfg


# ---------------------------------------------------------------------------- merge errors
def _merge_file(cfg: CN, config_file: str) -> None:
    if not os.path.isfile(config_file):
        raise ConfigLoadError(_missing_config_file(config_file))
    where = f"config file {config_file}"
    try:
        cfg.merge_from_file(config_file)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1} of {mark.name}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigLoadError(f"{where}: not valid YAML ({problem}{at})") from None
    except FileNotFoundError as e:  # a _BASE_ file
        raise ConfigLoadError(
            f"{where}: the file it inherits (_BASE_) {e.filename} does not exist; correct its "
            "_BASE_ path (relative to the file that names it)"
        ) from None
    except (KeyError, AssertionError, ValueError) as e:
        raise _merge_error(cfg, e, where) from None


def _merge_opts(cfg: CN, opts: list) -> None:
    if len(opts) % 2:
        raise ConfigLoadError(
            f"config overrides must be KEY VALUE pairs; got an odd number of words: {opts} "
            "(quote a value that contains spaces)"
        )
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError, ValueError) as e:
        raise _merge_error(cfg, e, "config override") from None


_KEYS_HELP = "the keys are in fsod_d2/config.py and detectron2/config/defaults.py"
_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")
_TYPE_MISMATCH = re.compile(
    r"Type mismatch \((.+) vs\. (.+)\) with values \((.*) vs\. (.*)\) for config key: (\S+)"
)


def _merge_error(cfg: CN, e: Exception, where: str) -> ConfigLoadError:
    """One line for yacs' errors (unknown key, wrong type, renamed key)."""
    text = str(e.args[0]) if e.args else str(e)
    unknown = _UNKNOWN_KEY.search(text)
    if unknown:
        key = unknown.group(1)
        close = _closest_key(cfg, key)
        hint = f"did you mean {close}?" if close else _KEYS_HELP
        return ConfigKeyError(f"{where}: {key} is not a config key; {hint}")
    mismatch = _TYPE_MISMATCH.search(text)
    if mismatch:
        expected, given, current, value, key = mismatch.groups()
        return ConfigLoadError(
            f"{where}: {key} takes a value of {_type_name(expected)} (like {current}), not "
            f"{value!r} ({_type_name(given)})"
        )
    if isinstance(e, KeyError):  # a renamed key: yacs' message says what to write instead
        return ConfigKeyError(f"{where}: {text}")
    return ConfigLoadError(f"{where}: {text}")


def _closest_key(cfg: CN, key: str) -> str:
    """The existing key ``key`` most likely meant: a sibling with a similar name, else a key
    with the same name in another section, else a similar full key ("" if none)."""
    keys = list(_all_keys(cfg))
    parent, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == parent}
    close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.75)
    if close:
        return siblings[close[0]]
    moved = [k for k in keys if k.rpartition(".")[2] == leaf]
    if moved:
        return moved[0]
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.85)
    return close[0] if close else ""


def _type_name(text: str) -> str:
    """The type name in yacs' "<class 'int'>"."""
    found = re.search(r"'(\w+)'", text)
    return found.group(1) if found else text


def _all_keys(cfg: CN, prefix: str = "") -> Iterator[str]:
    for k, v in cfg.items():
        if isinstance(v, CN):
            yield from _all_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _config_files() -> list[str]:
    """The .yaml files under ./configs and under the checkout's configs/, as paths to give."""
    found = []
    for root in dict.fromkeys([Path("configs").resolve(), CONFIG_DIR]):
        if root.is_dir():
            found += [_shown(path) for path in sorted(root.rglob("*.yaml"))]
    return list(dict.fromkeys(found))


def _shown(path: Path) -> str:
    """``path`` relative to the current folder if it is below it, else absolute."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return str(path) if rel.startswith("..") else rel


def _missing_config_file(config_file: str) -> str:
    candidates = _config_files()
    by_name: dict[str, list[str]] = {}
    for c in candidates:
        by_name.setdefault(os.path.basename(c), []).append(c)
    close = difflib.get_close_matches(os.path.normpath(config_file), candidates, n=2, cutoff=0.8)
    names = difflib.get_close_matches(os.path.basename(config_file), list(by_name), cutoff=0.8)
    for name in names:
        close += [c for c in by_name[name] if c not in close]
    if close:
        hint = "did you mean " + " or ".join(close[:2]) + "?"
    elif candidates:
        root = _shown(CONFIG_DIR) if CONFIG_DIR.is_dir() else "configs"
        hint = f"give one of the .yaml files under {root}/"
    else:
        hint = "give the path of a .yaml config file"
    return f"config file {config_file} does not exist; {hint}"


def add_fsod_config(cfg: CN) -> CN:
    """Add fsod-d2's keys (with defaults) to ``cfg`` in place and return it. Idempotent."""
    if "FSOD" in cfg:
        return cfg
    _add_model_config(cfg)
    _add_episode_config(cfg)
    _add_engine_config(cfg)
    _register_removed_keys(cfg)
    return cfg


def _register_removed_keys(cfg: CN) -> None:
    """Keys of earlier versions: merging one raises an error that says what to write instead."""
    for name in ("GLOBAL", "LOCAL", "PATCH"):
        cfg.register_renamed_key(
            f"MODEL.FSOD.{name}_RELATION",
            "MODEL.FSOD.RELATIONS",
            f"list the relation branches to use, e.g. MODEL.FSOD.RELATIONS: {_ALL_BUT[name]} "
            f"for {name}_RELATION False (default: all three)",
        )


_ALL_BUT = {
    "GLOBAL": "['LocalRelation', 'PatchRelation']",
    "LOCAL": "['GlobalRelation', 'PatchRelation']",
    "PATCH": "['GlobalRelation', 'LocalRelation']",
}


def _add_model_config(cfg: CN) -> None:
    m = cfg.MODEL.FSOD = CN()
    # How the support kernel conditions the RPN. "early": query feature * kernel, then the RPN
    # conv, once per class (paper). "late": the RPN conv runs once on the query, the kernel
    # multiplies its hidden map right before the objectness layer (cost nearly flat in #classes).
    m.RPN_CONDITIONING = "early"
    # Relation branches of the multi-relation head (class names registered in
    # fsod_d2.modeling.relations.RELATION_REGISTRY); their match logits are summed.
    # GlobalRelation: pooled query/support vectors -> MLP; LocalRelation: depth-wise correlation
    # of 1x1-reduced maps; PatchRelation: concatenated ROI maps -> small conv stack.
    m.RELATIONS = ["GlobalRelation", "LocalRelation", "PatchRelation"]
    m.RELATION_DIM = 256  # hidden width of each relation branch
    # Training pairs (ROI, class) per query image, sampled as
    # positive matches : background ROIs of present classes : ROIs paired with absent classes.
    m.PAIRS_PER_IMAGE = 128
    m.PAIR_SAMPLING_RATIO = [1.0, 2.0, 1.0]
    m.MATCH_LOSS_WEIGHT = 1.0  # weight of the binary match (classification) loss
    m.BOX_LOSS_WEIGHT = 1.0  # weight of the class-agnostic box regression loss
    # Weight of an extra loss that contrasts the episode's classes: every foreground ROI scored
    # against all N prototypes of its episode, cross-entropy on its true class (0 = off).
    m.CLASS_CONTRAST_WEIGHT = 0.0
    # Auxiliary base-class classifier, training only: a linear layer on the pooled res5 features
    # of every support crop and every ground-truth box of the query (episode classes), with a
    # cross-entropy over the dataset's classes. It gives a from-scratch backbone the
    # discriminative many-way signal that a plain detector's classifier gets (the binary match
    # loss alone learns features slowly); it is not used at inference, so novel classes still
    # need only supports. WEIGHT 0 = off.
    m.BASE_CLASSIFIER = CN()
    m.BASE_CLASSIFIER.WEIGHT = 0.0
    # classes of the classifier; 0 = len(thing_classes) of DATASETS.TRAIN[0]'s metadata
    m.BASE_CLASSIFIER.NUM_CLASSES = 0
    # True: proposals of all classes are merged per image (best class per anchor, one NMS) and
    # every ROI is paired with every class, so res5 runs once per box. False: each class keeps
    # its own proposals and ROIs (paper / FewX).
    m.SHARED_PROPOSALS = True
    # Test time: run the expensive relation branches (PatchRelation) only on the top-k classes of
    # each ROI ranked by the cheap branches' score (global + local); 0 = score every (ROI, class)
    # pair with every branch.
    m.PATCH_TOPK = 0
    # Test time: how match logits become detection scores. "softmax": the prototype set's
    # classes compete for each ROI, an (N+1)-way softmax with a zero background logit (equal to
    # the sigmoid when one class matches), so an object scores lower for a class it matches
    # less well than another. "sigmoid": each class on its own (paper). On the same trained
    # models softmax raised novel AP and lowered base AP a little (benchmarks/CHANGELOG.md).
    # Only with SHARED_PROPOSALS (else an ROI has one class).
    m.TEST_SCORE = "softmax"
    # Run conv + FrozenBatchNorm pairs (ResNet) as one convolution with the norm folded into the
    # weights: same parameters, checkpoints and outputs; saves the norm's elementwise passes.
    m.FOLD_FROZEN_BN = True
    # Parameters and backbone inputs in channels-last memory format (cuDNN's NHWC kernels without
    # layout transposes). Off by default: no GPU measurement shows a gain yet.
    m.CHANNELS_LAST = False

    # ---- Testing and benchmark knobs (not for production configs) ----
    # Benchmark/test reference: run each class's branch separately in a Python loop
    # (FewX-style). Same weights, same outputs as SHARED_PROPOSALS=False; only slower. Used by
    # benchmarks/ (per-class baseline) and the tests that check the batched model against it.
    m.PER_CLASS_REFERENCE = False
    # Tiny backbone of the CPU tests and the demo (registered as "build_fsod_tiny_backbone";
    # unused by ResNet configs). Its output name is MODEL.RESNETS.OUT_FEATURES[0]; its channels
    # RES2_OUT_CHANNELS * 4 so that detectron2's res5 head (built from MODEL.RESNETS) fits on
    # top, as for ResNet C4.
    m.TINY_BACKBONE = CN()
    m.TINY_BACKBONE.STEM_CHANNELS = 32

    # torchvision model-zoo backbone (MODEL.BACKBONE.NAME "build_torchvision_backbone"): the
    # model is split C4-style, trunk to stride 16 shared by queries and supports, its stride-32
    # stage as the ROI head's per-box feature extractor (fsod_d2/modeling/torchvision_backbone.py)
    tv = cfg.MODEL.TORCHVISION = CN()
    tv.ARCH = "mobilenet_v2"  # torchvision.models name with a registered split
    # member of the architecture's torchvision weights enum, loaded through torchvision (its
    # cache under $TORCH_HOME, its hash check); "" = random initialisation
    tv.WEIGHTS = "IMAGENET1K_V1"


def _add_episode_config(cfg: CN) -> None:
    f = cfg.FSOD = CN()
    f.N_WAY = 5  # classes per training episode (positive + negative)
    f.K_SHOT = 3  # support crops per class
    f.MAX_POSITIVE_CLASSES = 2  # at most this many of the N classes are present in the query
    f.SEED = 0  # episode stream seed; episodes are a function of (SEED, iteration, rank)
    # True: a class with fewer than K instances is an error, not a warning (K: FSOD.K_SHOT,
    # FSOD.TEST.K_SHOT, and the K of a K-shot file in DATASETS.TRAIN)
    f.STRICT_SHOTS = False

    f.SUPPORT = CN()
    f.SUPPORT.SIZE = 320  # support crops are SIZE x SIZE (aspect kept, zero padded); 384 also ok
    f.SUPPORT.CONTEXT = 16  # pixels of context around each support box
    f.SUPPORT.MIN_BOX_SIZE = 8  # boxes with a side shorter than this never become supports
    # Supports never come from the query image; True: except for a class whose crops are all in
    # the query (1-shot fine-tuning sets: each class is in one image, so without this no episode
    # has a positive class). Off for base training, on in the *_finetune configs.
    f.SUPPORT.QUERY_FALLBACK = False
    # Support sampling policy (episode classes, query-image exclusion, K-shot draws for training
    # and evaluation): a class name in fsod_d2.data.sampling.SUPPORT_SAMPLER_REGISTRY.
    f.SUPPORT.SAMPLER = "SupportSampler"
    # Root of the support-crop caches, shared by every run on the same data: a pool lives in
    # <root>/<datasets>-<hash of crop settings and annotations>, built once (atomically, by one
    # process). "" -> $FSOD_SUPPORT_CACHE if set, else $DETECTRON2_DATASETS/.fsod_support_cache.
    f.SUPPORT.CACHE_DIR = ""
    # Encoding of cached crops: "jpg" (quality 95; ~5x smaller, for COCO-sized pools), "png"
    # (lossless: cached crops equal crop_support() exactly) or "raw" (decoded pixels, lossless:
    # no JPEG/PNG decode per episode, the loader's largest cost at 384 px; ~8x the bytes of
    # "jpg", for pools that fit in the page cache).
    f.SUPPORT.CACHE_FORMAT = "jpg"

    # Few-shot datasets declared from config (no Python needed): each entry is
    # "name=<n>;json=<path>;images=<dir>;base=<c1,c2,..>;novel=<c3,...>" (names or ids).
    f.REGISTER = []

    # K-shot adaptation (configs/fsod_mnv2_cpu_adapt.yaml, tools/adapt_model.py): a base-trained
    # model trained on a K-shot set of its classes (DATASETS.TRAIN, MODEL.WEIGHTS the base model).
    f.ADAPT = CN()
    # Parameters that do not train: names starting with one of these prefixes (e.g. "backbone",
    # "roi_heads.res5"); [] = every parameter trains (besides MODEL.BACKBONE.FREEZE_AT's)
    f.ADAPT.FREEZE = []
    # Training on K-shot sets with at most LOW_SHOT_K shots per class (the smallest K of the
    # K-shot sets in DATASETS.TRAIN) freezes LOW_SHOT_FREEZE instead of FREEZE: fewer examples,
    # fewer parameters to fit them. 0 = FREEZE at every K.
    f.ADAPT.LOW_SHOT_K = 0
    f.ADAPT.LOW_SHOT_FREEZE = []
    # Training on K-shot sets (K as for LOW_SHOT_K) runs max(SOLVER.MAX_ITER, ITERS_PER_SHOT x K)
    # iterations: more examples, more iterations to see them. 0 = SOLVER.MAX_ITER at every K.
    f.ADAPT.ITERS_PER_SHOT = 0

    f.TEST = CN()
    # Registered dataset whose annotations provide the K-shot supports at evaluation
    # (the seeded few-shot split of the training set).
    f.TEST.SUPPORT_DATASET = ""
    f.TEST.K_SHOT = 3  # supports per class at evaluation
    f.TEST.SEED = 0  # seed of the evaluation support draw
    f.TEST.PROTOTYPE_FILE = ""  # optional cache of computed prototypes (validated on load)


def _add_engine_config(cfg: CN) -> None:
    e = cfg.FSOD.ENGINE = CN()
    e.LOG_GPU_STATS_PERIOD = 20  # iterations between GPU utilisation / memory records
    # "SGD" (detectron2's, SOLVER.MOMENTUM/NESTEROV) or "AdamW" (betas below; SOLVER.BASE_LR,
    # WEIGHT_DECAY and the bias/norm factors apply as for SGD). AdamW trains the tiny CPU
    # models from scratch in fewer iterations (the toy demo's tiny config); the paper uses SGD.
    e.OPTIMIZER = "SGD"
    e.ADAMW_BETAS = (0.9, 0.999)  # AdamW only
    # Autocast dtype when SOLVER.AMP.ENABLED: "auto" (bfloat16 on GPUs that support it, else
    # float16 with loss scaling), "bfloat16" or "float16". On CPU always bfloat16.
    e.AMP_DTYPE = "auto"
