"""FsodTrainer: detectron2's DefaultTrainer with episodic data, few-shot evaluation and hooks.

What differs from :class:`DefaultTrainer`:

* training batches come from :func:`fsod_d2.data.build_episodic_train_loader`, whose episode
  stream continues exactly where it stopped after ``resume_or_load(resume=True)``;
* with ``cfg.SEED >= 0`` torch's RNG is re-seeded from (SEED, iteration, rank) before every
  forward pass in training, so a resumed run samples the same anchors/ROI pairs as an
  uninterrupted one (and ends with the same weights);
* the config is checked before anything is built (:func:`fsod_d2.engine.check_config`): a
  config that would fail at the first evaluation is refused at start;
* :meth:`FsodTrainer.test` computes the class prototypes once from the seeded K-shot support
  set (``cfg.FSOD.TEST``), then runs detectron2's ``inference_on_dataset`` with the evaluator
  of each test set's ``evaluator_type`` (:class:`FsodCOCOEvaluator`: AP and bAP/nAP);
* multi-process training works on CPU (GLOO) and ``SOLVER.AMP.ENABLED`` works on CPU
  (bfloat16 autocast) as well as on GPUs;
* hooks record episodes/min, images/s and per-GPU memory/utilisation, and an out-of-memory
  error in a step is re-raised with the settings that drive memory use.
"""

import contextlib
import functools
import json
import logging
import os
import weakref
from typing import Dict, Iterator, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer
from detectron2.engine import defaults as d2_defaults
from detectron2.evaluation import DatasetEvaluators
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from ..config import setup_cfg  # noqa: F401  (re-exported: fsod_d2.engine.setup_cfg)
from ..data import build_episodic_train_loader, build_support_set, subset_class_ids
from ..evaluation import evaluator_class, evaluator_types
from ..modeling.checkpoint import FsodCheckpointer
from ..modeling.support import PrototypeSet, StalePrototypeError, support_fingerprint
from ..utils.files import atomic_write
from ..utils.text import count
from .adapt import freeze_parameters, frozen_prefixes, scheduled_cfg
from .checks import check_config, support_dataset_required
from .hooks import GPUStatsHook, ThroughputHook, explain_oom
from .precision import needs_grad_scaler, resolve_amp_dtype

logger = logging.getLogger(__name__)

__all__ = ["FsodAMPTrainer", "FsodTrainer", "setup_cfg", "unwrap_model"]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The FsodRCNN inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


# ---------------------------------------------------------------------------- config / datasets
# ---------------------------------------------------------------------------- trainers
class FsodAMPTrainer(AMPTrainer):
    """:class:`AMPTrainer` that also runs on CPU: bfloat16 autocast there (which needs no
    loss scaling); on CUDA detectron2's AMP in ``precision`` (``FSOD.ENGINE.AMP_DTYPE``, see
    :func:`fsod_d2.engine.precision.resolve_amp_dtype`), with a GradScaler for float16 only."""

    def __init__(self, model, data_loader, optimizer, precision: torch.dtype = torch.float16):
        device = next(model.parameters()).device.type
        scaler = torch.amp.GradScaler(device, enabled=needs_grad_scaler(precision, device))
        super().__init__(model, data_loader, optimizer, grad_scaler=scaler, precision=precision)

    def run_step(self):
        if next(self.model.parameters()).device.type == "cuda":
            return super().run_step()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return SimpleTrainer.run_step(self)


@contextlib.contextmanager
def _cpu_ddp_support(device: str) -> Iterator[None]:
    """detectron2's ``create_ddp_model`` always passes ``device_ids=[local_rank]``, which
    DistributedDataParallel rejects for CPU modules; on CPU, pass ``device_ids=None``."""
    if comm.get_world_size() == 1 or torch.device(device).type != "cpu":
        yield
        return
    original = d2_defaults.create_ddp_model
    d2_defaults.create_ddp_model = functools.partial(original, device_ids=None)
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = original


class _StepSeeder:
    """Forward pre-hook: in training mode, seed torch's RNG from (seed, iteration, rank), so
    the random sampling of a step (anchors, ROI pairs) does not depend on the run's history."""

    def __init__(self, trainer_ref, seed: int):
        self.trainer_ref, self.seed = trainer_ref, int(seed)

    def __call__(self, module, args):
        trainer = self.trainer_ref()
        if trainer is not None and module.training:
            state = np.random.SeedSequence([self.seed, trainer.iter, comm.get_rank()])
            torch.manual_seed(int(state.generate_state(1)[0]))


class FsodTrainer(DefaultTrainer):
    """DefaultTrainer for FsodRCNN: episodic loader, few-shot evaluation, throughput and GPU
    hooks, explained OOM errors, CPU multi-process and AMP. See the module docstring."""

    def __init__(self, cfg: CfgNode, *, config_file: str = ""):
        """``config_file``: the file ``cfg`` was read from, named in messages about weights."""
        check_config(cfg)  # before the model, the support cache and the loader are built
        cfg = scheduled_cfg(cfg)  # K-shot adaptation: iterations per shot
        self.config_file = config_file
        with _cpu_ddp_support(cfg.MODEL.DEVICE):
            super().__init__(cfg)
        if cfg.SOLVER.AMP.ENABLED:  # detectron2's AMPTrainer asserts CUDA
            t = self._trainer
            dtype = resolve_amp_dtype(cfg.FSOD.ENGINE.AMP_DTYPE, cfg.MODEL.DEVICE)
            logger.info("Mixed precision: %s autocast", dtype)
            self._trainer = FsodAMPTrainer(t.model, t.data_loader, t.optimizer, precision=dtype)
        if cfg.SEED >= 0:
            # Seed right before the forward pass, after the batch was fetched: the loader
            # draws from torch's RNG when its first batch is loaded, which a resumed run does
            # at another iteration than an unbroken one.
            unwrap_model(self.model).register_forward_pre_hook(
                _StepSeeder(weakref.ref(self), cfg.SEED)
            )

    # ------------------------------------------------------------------ building blocks
    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        """detectron2's model, with the parameters of ``FSOD.ADAPT.FREEZE`` frozen (or of
        ``FSOD.ADAPT.LOW_SHOT_FREEZE``, on K-shot sets of at most ``FSOD.ADAPT.LOW_SHOT_K``
        shots per class)."""
        model = super().build_model(cfg)
        freeze_parameters(model, *frozen_prefixes(cfg))
        return model

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        """detectron2's SGD, or AdamW with the same parameter groups (FSOD.ENGINE.OPTIMIZER)."""
        name = cfg.FSOD.ENGINE.OPTIMIZER.lower()
        if name == "sgd":
            return super().build_optimizer(cfg, model)
        if name != "adamw":
            raise ValueError(f"FSOD.ENGINE.OPTIMIZER must be 'SGD' or 'AdamW', not {name!r}")
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        optimizer = torch.optim.AdamW(
            params,
            lr=cfg.SOLVER.BASE_LR,
            betas=tuple(cfg.FSOD.ENGINE.ADAMW_BETAS),
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        )
        return maybe_add_gradient_clipping(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return build_episodic_train_loader(cfg)

    @classmethod
    def build_evaluator(
        cls,
        cfg: CfgNode,
        dataset_name: str,
        output_folder: Optional[str] = None,
        *,
        class_ids: Optional[Sequence[int]] = None,
    ) -> DatasetEvaluators:
        """The evaluator of the dataset's ``evaluator_type`` (metadata, default "coco"; see
        :data:`fsod_d2.evaluation.FSOD_EVALUATOR_REGISTRY`), over ``class_ids`` (contiguous; default
        every class of the dataset), writing to ``output_folder``
        (default ``OUTPUT_DIR/inference/<dataset>``)."""
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
        evaluator_cls = evaluator_class(evaluator_type)
        if evaluator_cls is None:
            raise ValueError(
                f"no fsod-d2 evaluator for dataset '{dataset_name}' of evaluator_type "
                f"{evaluator_type!r} (known: {evaluator_types()})"
            )
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator = evaluator_cls(dataset_name, output_dir=output_folder, class_ids=class_ids)
        return DatasetEvaluators([evaluator])

    def build_hooks(self):
        # DefaultTrainer.__init__ made a DetectionCheckpointer right before calling this: ours
        # loads the same files and refuses weights of another model with one line
        self.checkpointer = FsodCheckpointer.like(self.checkpointer, config_file=self.config_file)
        hooks = super().build_hooks()
        cfg = self.cfg
        extra = [ThroughputHook(cfg.SOLVER.IMS_PER_BATCH, cfg.FSOD.N_WAY * cfg.FSOD.K_SHOT)]
        self.throughput = extra[0]
        if torch.cuda.is_available() and torch.device(cfg.MODEL.DEVICE).type == "cuda":
            extra.append(GPUStatsHook(cfg.FSOD.ENGINE.LOG_GPU_STATS_PERIOD))
        # after the IterationTimer, before the checkpointer/evaluation/writers
        return hooks[:1] + extra + hooks[1:]

    def resume_or_load(self, resume: bool = True):
        super().resume_or_load(resume=resume)
        # The episode stream continues at the resumed iteration (the loader's iterator is
        # created lazily by the first step, so this is in time).
        if hasattr(self.data_loader, "start_iter"):
            self.data_loader.start_iter = self.start_iter

    def run_step(self):
        with explain_oom(self.cfg, f"training iteration {self.iter}"):
            super().run_step()

    # ------------------------------------------------------------------ evaluation
    @classmethod
    def build_prototypes(cls, cfg: CfgNode, model: torch.nn.Module) -> PrototypeSet:
        """Prototypes of the evaluation support set (``cfg.FSOD.TEST``: K-shot draw of
        SUPPORT_DATASET with SEED), loaded from PROTOTYPE_FILE if it matches these weights and
        supports, otherwise computed (and saved there by the main process)."""
        model = unwrap_model(model)
        t = cfg.FSOD.TEST
        if not t.SUPPORT_DATASET:
            raise ValueError(support_dataset_required(cfg))
        images, boxes, class_ids, names = build_support_set(
            cfg, t.SUPPORT_DATASET, t.K_SHOT, t.SEED
        )
        if t.PROTOTYPE_FILE and os.path.isfile(t.PROTOTYPE_FILE):
            fingerprint = support_fingerprint(images, boxes, class_ids, t.K_SHOT)
            try:
                prototypes = model.load_prototypes(t.PROTOTYPE_FILE, support_fp=fingerprint)
                logger.info(
                    "Loaded %s from %s", count(len(prototypes), "class prototype"), t.PROTOTYPE_FILE
                )
                return prototypes
            except StalePrototypeError as e:
                logger.info("Recomputing prototypes: %s", e)
        prototypes = model.compute_prototypes(images, boxes, class_ids, names)
        if t.PROTOTYPE_FILE and comm.is_main_process():
            prototypes.save(t.PROTOTYPE_FILE)
        return prototypes

    @staticmethod
    def _classes_of(prototypes: PrototypeSet, dataset_name: str) -> PrototypeSet:
        """The prototypes of the classes a test set is annotated for (e.g. only novel ones
        for a ``*_novel`` variant)."""
        keep = set(subset_class_ids(MetadataCatalog.get(dataset_name)))
        return prototypes.select(c for c in prototypes.class_ids.tolist() if c in keep)

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators=None):
        """Compute the prototypes once, then evaluate every ``cfg.DATASETS.TEST`` set with
        detectron2's test loop. Returns detectron2's results dict (with bAP/nAP)."""
        if not cfg.DATASETS.TEST:
            return {}
        module = unwrap_model(model)
        with explain_oom(cfg, "prototype computation"):
            prototypes = cls.build_prototypes(cfg, module)
        if evaluators is not None and not isinstance(evaluators, (list, tuple)):
            evaluators = [evaluators]
        results = {}
        try:
            for i, name in enumerate(cfg.DATASETS.TEST):
                protos = cls._classes_of(prototypes, name)
                module.set_prototypes(protos)
                evaluator = (
                    evaluators[i]
                    if evaluators
                    else cls.build_evaluator(cfg, name, class_ids=protos.class_ids.tolist())
                )
                single = cfg.clone()
                single.defrost()
                single.DATASETS.TEST = (name,)
                with explain_oom(cfg, f"inference on {name}"):
                    results[name] = super().test(single, model, [evaluator])
                if comm.is_main_process():
                    cls._report(cfg, name, protos, results[name])
        finally:
            module.set_prototypes(None)  # weights change during training: never reuse
        return next(iter(results.values())) if len(results) == 1 else results

    @staticmethod
    def _report(cfg: CfgNode, name: str, prototypes: PrototypeSet, result: Dict) -> None:
        bbox = result.get("bbox", {})
        logger.info(
            "%s (%s, %d-shot supports of %s, seed %d): AP %.2f | bAP %.2f | nAP %.2f | nAP50 %.2f",
            name,
            count(len(prototypes), "class"),
            cfg.FSOD.TEST.K_SHOT,
            cfg.FSOD.TEST.SUPPORT_DATASET,
            cfg.FSOD.TEST.SEED,
            *(bbox.get(k, float("nan")) for k in ("AP", "bAP", "nAP", "nAP50")),
        )
        path = os.path.join(
            cfg.OUTPUT_DIR,
            "inference",
            name,
            f"fsod_metrics_{cfg.FSOD.TEST.K_SHOT}shot_seed{cfg.FSOD.TEST.SEED}.json",
        )
        record = {
            "dataset": name,
            "support_dataset": cfg.FSOD.TEST.SUPPORT_DATASET,
            "k_shot": cfg.FSOD.TEST.K_SHOT,
            "seed": cfg.FSOD.TEST.SEED,
            "weights": cfg.MODEL.WEIGHTS,
            "weights_fingerprint": prototypes.weights_fingerprint,  # the evaluated weights
            "classes": prototypes.class_names,
            "metrics": {task: dict(m) for task, m in result.items()},
        }
        with atomic_write(path) as f:
            json.dump(record, f, indent=1)
        logger.info("Few-shot metrics written to %s", path)
