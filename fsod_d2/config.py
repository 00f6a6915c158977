"""All fsod-d2 config keys, and the one function that builds a config.

``add_fsod_config`` is the only place the keys are declared. It adds keys to the cfg it is given
(never to detectron2's global ``_C``). Episode and data keys live under ``cfg.FSOD``; model keys
under ``cfg.MODEL.FSOD``. :func:`setup_cfg` builds the config of a file and command-line
overrides; the tools, the trainer, the benchmarks and the tests all use it.
"""

import logging
from collections.abc import Sequence

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

logger = logging.getLogger(__name__)

__all__ = ["add_fsod_config", "setup_cfg"]


def setup_cfg(config_file: str = "", opts: Sequence[str] = (), *, freeze: bool = True) -> CN:
    """detectron2's defaults + fsod keys, merged with ``config_file`` and ``opts`` (KEY VALUE
    ...); the datasets declared in ``FSOD.REGISTER`` are registered. Without CUDA, a ``cuda``
    MODEL.DEVICE falls back to the CPU (with a warning). Returns the cfg, frozen unless
    ``freeze=False`` (call detectron2's ``default_setup`` on it for logging/output)."""
    from .data.datasets import register_from_config  # the data package imports this module

    cfg = add_fsod_config(get_cfg())
    if config_file:
        cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(list(opts or ()))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is not available: using the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    register_from_config(cfg)
    if freeze:
        cfg.freeze()
    return cfg


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
    # less well than another. "sigmoid": each class on its own (paper). Same trained models:
    # novel AP up, base AP a little down (demo: nAP50 11.9 -> 16.3, bAP 32.8 -> 30.1; 50-class
    # benchmark: 5-shot nAP50 +4.5, README). Only with SHARED_PROPOSALS (else an ROI has one class).
    m.TEST_SCORE = "softmax"
    # Run conv + FrozenBatchNorm pairs (ResNet) as one convolution with the norm folded into the
    # weights: same parameters, checkpoints and outputs; saves the norm's elementwise passes.
    m.FOLD_FROZEN_BN = True
    # Parameters and backbone inputs in channels-last memory format (cuDNN's NHWC kernels without
    # layout transposes). Off: not measured faster on a GPU here yet.
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
    # models from scratch much faster (demo); the paper setting uses SGD.
    e.OPTIMIZER = "SGD"
    e.ADAMW_BETAS = (0.9, 0.999)  # AdamW only
    # Autocast dtype when SOLVER.AMP.ENABLED: "auto" (bfloat16 on GPUs that support it, else
    # float16 with loss scaling), "bfloat16" or "float16". On CPU always bfloat16.
    e.AMP_DTYPE = "auto"
