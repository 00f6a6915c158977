"""Relation branches of the multi-relation head, one module each (see :mod:`.base`)."""

from . import global_relation, local_relation, patch_relation  # noqa: F401  (registers)
from .base import RELATION_REGISTRY, MultiRelation, RelationBranch, build_relations

__all__ = ["RELATION_REGISTRY", "MultiRelation", "RelationBranch", "build_relations"]
