"""All fsod-d2 config keys. ``add_fsod_config`` is the only place they are declared.

It adds keys to the cfg it is given (never to detectron2's global ``_C``). Episode and data keys
live under ``cfg.FSOD``; model keys under ``cfg.MODEL.FSOD``.
"""

from detectron2.config import CfgNode as CN


def add_fsod_config(cfg: CN) -> CN:
    """Add fsod-d2's keys (with defaults) to ``cfg`` in place and return it. Idempotent."""
    if "FSOD" in cfg:
        return cfg
    _add_model_config(cfg)
    _add_episode_config(cfg)
    _add_engine_config(cfg)
    return cfg


def _add_model_config(cfg: CN) -> None:
    m = cfg.MODEL.FSOD = CN()
    # How the support kernel conditions the RPN. "early": query feature * kernel, then the RPN
    # conv, once per class (paper). "late": the RPN conv runs once on the query, the kernel
    # multiplies its hidden map right before the objectness layer (cost nearly flat in #classes).
    m.RPN_CONDITIONING = "early"
    # Relation branches of the multi-relation head; their match logits are summed.
    m.GLOBAL_RELATION = True  # pooled query/support vectors -> MLP
    m.LOCAL_RELATION = True  # depth-wise correlation of 1x1-reduced maps
    m.PATCH_RELATION = True  # concatenated ROI maps -> small conv stack
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
    # Test time: run the patch relation only on the top-k classes of each ROI ranked by the cheap
    # global+local score; 0 = score every (ROI, class) pair with every branch.
    m.PATCH_TOPK = 0
    # Test time: how match logits become detection scores. "softmax": the prototype set's
    # classes compete for each ROI, an (N+1)-way softmax with a zero background logit (equal to
    # the sigmoid when one class matches), so an object scores lower for a class it matches
    # less well than another. "sigmoid": each class on its own (paper). Same trained models:
    # novel AP up, base AP a little down (demo: nAP50 11.9 -> 16.3, bAP 32.8 -> 30.1; 50-class
    # benchmark: 5-shot nAP50 +4.5, README). Only with SHARED_PROPOSALS (else an ROI has one class).
    m.TEST_SCORE = "softmax"
    # Benchmark reference: run each class's branch separately in a Python loop (FewX-style).
    # Same weights, same outputs as SHARED_PROPOSALS=False; only slower.
    m.PER_CLASS_REFERENCE = False
    # Run conv + FrozenBatchNorm pairs (ResNet) as one convolution with the norm folded into the
    # weights: same parameters, checkpoints and outputs; saves the norm's elementwise passes.
    m.FOLD_FROZEN_BN = True
    # Parameters and backbone inputs in channels-last memory format (cuDNN's NHWC kernels without
    # layout transposes). Off: not measured faster on a GPU here yet.
    m.CHANNELS_LAST = False

    # Tiny backbone for CPU tests/demo (registered as "build_fsod_tiny_backbone"). Its output
    # name is MODEL.RESNETS.OUT_FEATURES[0]; its channels RES2_OUT_CHANNELS * 4 so that
    # detectron2's res5 head (built from MODEL.RESNETS) fits on top, as for ResNet C4.
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
    f.STRICT_SHOTS = False  # True: a class with fewer than K instances is an error, not a warning

    f.SUPPORT = CN()
    f.SUPPORT.SIZE = 320  # support crops are SIZE x SIZE (aspect kept, zero padded); 384 also ok
    f.SUPPORT.CONTEXT = 16  # pixels of context around each support box
    f.SUPPORT.MIN_BOX_SIZE = 8  # boxes with a side shorter than this never become supports
    # Supports never come from the query image; True: except for a class whose crops are all in
    # the query (1-shot fine-tuning sets: each class is in one image, so without this no episode
    # has a positive class). Off for base training, on in the *_finetune configs.
    f.SUPPORT.QUERY_FALLBACK = False
    f.SUPPORT.CACHE_DIR = ""  # support-crop cache; "" -> OUTPUT_DIR/support_cache
    # Encoding of cached crops: "jpg" (quality 95; ~5x smaller, for COCO-sized pools), "png"
    # (lossless: cached crops equal crop_support() exactly) or "raw" (decoded pixels, lossless:
    # no JPEG/PNG decode per episode, the loader's largest cost at 384 px; ~8x the bytes of
    # "jpg", for pools that fit in the page cache).
    f.SUPPORT.CACHE_FORMAT = "jpg"

    # Few-shot datasets declared from config (no Python needed): each entry is
    # "name=<n>;json=<path>;images=<dir>;base=<c1,c2,..>;novel=<c3,...>" (names or ids).
    f.REGISTER = []

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
