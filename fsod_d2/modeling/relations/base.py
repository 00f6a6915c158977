"""The relation-branch interface, its registry, and the sum of branches the head uses.

A relation branch scores (query ROI, support class) pairs with one match logit each. It has two
halves: ``embed_query`` / ``embed_support`` run once per ROI and once per class, and
``pair_logits`` combines embeddings. ``pair_logits`` broadcasts over leading dimensions, so the
same code scores a list of pairs (``embeddings[qi]``, ``embeddings[si]``: (P, ...)) and every
pair at once (``q[:, None]``, ``s[None]``: (R, N, ...)); the two cannot drift apart.

Adding a branch: one module with a :class:`RelationBranch` subclass registered in
:data:`RELATION_REGISTRY` (by class name, as detectron2's registries do), imported by
``relations/__init__.py`` (or by the user's code before the model is built); its class name
then goes into ``MODEL.FSOD.RELATIONS``.
"""

import abc
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.layers import cat
from detectron2.utils.registry import Registry
from torch import Tensor, nn

__all__ = ["RELATION_REGISTRY", "RelationBranch", "MultiRelation", "build_relations"]

RELATION_REGISTRY = Registry("FSOD_RELATION")
RELATION_REGISTRY.__doc__ = """
Relation branches of the multi-relation head (``MODEL.FSOD.RELATIONS``). A registered class is
called as ``cls(channels=C5, hidden=MODEL.FSOD.RELATION_DIM)`` and must be a
:class:`RelationBranch`.
"""

CHEAP, EXPENSIVE = "cheap", "expensive"
# pairs scored per chunk by the expensive branches; bounds peak memory
_PAIR_CHUNK = 1024


class RelationBranch(nn.Module, abc.ABC):
    """One relation branch. Subclasses set ``cost`` and implement ``pair_logits``.

    Attributes:
        cost: ``"cheap"`` or ``"expensive"``. With ``MODEL.FSOD.PATCH_TOPK`` = k > 0, the
            expensive branches score at test time only each ROI's top-k classes, ranked by the
            sum of the cheap branches.
    """

    cost: str = CHEAP

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.channels, self.hidden = channels, hidden

    def embed_query(self, x: Tensor) -> Tensor:
        """Per-ROI embedding of query ROI features ``x`` (R, C5, h, w)."""
        return x

    def embed_support(self, x: Tensor) -> Tensor:
        """Per-class embedding of support prototypes ``x`` (N, C5, h, w)."""
        return x

    @abc.abstractmethod
    def pair_logits(self, q: Tensor, s: Tensor) -> Tensor:
        """Match logits of broadcastable embeddings: ``q`` (*L, ...) and ``s`` (*L, ...) ->
        (*L,), where *L are the same (or broadcastable) leading dimensions."""

    def _one_pass(self) -> bool:
        """Score all pairs in one pass: cheap branches always; expensive ones when exported
        (the graph's class count is symbolic, so a chunk count would be data-dependent;
        chunks only bound the memory of the eager path)."""
        return self.cost == CHEAP or torch.compiler.is_exporting()

    def pairwise(self, q: Tensor, s: Tensor, qi: Tensor, si: Tensor) -> Tensor:
        """Logits of the pairs ``(qi[p], si[p])``: (P,)."""
        if self._one_pass() or qi.numel() <= _PAIR_CHUNK:
            return self.pair_logits(q[qi], s[si])
        parts = zip(qi.split(_PAIR_CHUNK), si.split(_PAIR_CHUNK))
        return cat([self.pair_logits(q[a], s[b]) for a, b in parts], dim=0)

    def dense(self, q: Tensor, s: Tensor) -> Tensor:
        """Logits of every (query row, support row) pair: (R, N)."""
        if self._one_pass():
            return self.pair_logits(q[:, None], s[None])
        rows = max(1, _PAIR_CHUNK // max(len(s), 1))
        return cat([self.pair_logits(p[:, None], s[None]) for p in q.split(rows)], dim=0)


class MultiRelation(nn.Module):
    """The relation branches of ``MODEL.FSOD.RELATIONS``; their logits are summed.

    Embeddings travel as dicts ``{branch name: tensor}`` (see :meth:`embed_queries`).
    """

    # 2: branches in ``branches.<name>`` (version 1: flat ``global_q``, ``patch_fc``, ...)
    _version = 2

    def __init__(self, branches: Dict[str, RelationBranch]):
        super().__init__()
        if not branches:
            raise ValueError("MODEL.FSOD.RELATIONS is empty: name at least one relation branch")
        self.branches = nn.ModuleDict(branches)

    @property
    def cheap(self) -> List[str]:
        return [n for n, b in self.branches.items() if b.cost == CHEAP]

    @property
    def expensive(self) -> List[str]:
        return [n for n, b in self.branches.items() if b.cost != CHEAP]

    def embed_queries(self, x: Tensor) -> Dict[str, Tensor]:
        """Per-ROI embeddings of every branch; ``x``: (R, C5, h, w)."""
        return {n: b.embed_query(x) for n, b in self.branches.items()}

    def embed_supports(self, x: Tensor) -> Dict[str, Tensor]:
        """Per-class embeddings of every branch; ``x``: (N, C5, h, w)."""
        return {n: b.embed_support(x) for n, b in self.branches.items()}

    def forward(
        self,
        q: Dict[str, Tensor],
        s: Dict[str, Tensor],
        qi: Tensor,
        si: Tensor,
        names: Optional[Sequence[str]] = None,
    ) -> Tensor:
        """Summed logits of the pairs ``(qi[p], si[p])`` over ``names`` (default: all)."""
        names = list(self.branches) if names is None else names
        logits = [self.branches[n].pairwise(q[n], s[n], qi, si) for n in names]
        return torch.stack(logits).sum(0)

    def dense(self, q: Dict[str, Tensor], s: Dict[str, Tensor], topk: int = 0) -> Tensor:
        """(R, N) summed logits of every ROI with every class.

        With ``topk > 0`` and at least one cheap branch, the expensive branches score only
        each ROI's top-k classes by cheap score; the other pairs get ``-inf`` (every pair is
        scored when ``topk >= N``).
        """
        cheap, expensive = self.cheap, self.expensive
        if cheap:
            logits = torch.stack([self.branches[n].dense(q[n], s[n]) for n in cheap]).sum(0)
        else:
            ref_q, ref_s = next(iter(q.values())), next(iter(s.values()))
            logits = ref_q.new_zeros(len(ref_q), len(ref_s))
        if not expensive:
            return logits
        num_rois, num_classes = logits.shape
        if cheap and topk > 0:
            k = torch.sym_min(topk, num_classes)  # no branch on the class count (export)
            top = logits.topk(k, dim=1)
            rows = torch.arange(num_rois, device=logits.device)[:, None].expand_as(top.indices)
            extra = self(q, s, rows.reshape(-1), top.indices.reshape(-1), names=expensive)
            pruned = torch.full_like(logits, float("-inf"))
            return pruned.scatter(1, top.indices, top.values + extra.view_as(top.values))
        return logits + torch.stack([self.branches[n].dense(q[n], s[n]) for n in expensive]).sum(0)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        version = local_metadata.get("version")
        if version is None or version < 2:
            _rename_v1_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


# version-1 (flat) key prefixes -> branch module names
_V1_KEYS = {
    "global_q.": "GlobalRelation.query_proj.",
    "global_s.": "GlobalRelation.support_proj.",
    "global_mlp.": "GlobalRelation.mlp.",
    "local_reduce.": "LocalRelation.reduce.",
    "local_fc.": "LocalRelation.fc.",
    "patch_q.": "PatchRelation.query_proj.",
    "patch_s.": "PatchRelation.support_proj.",
    "patch_convs.": "PatchRelation.convs.",
    "patch_fc.": "PatchRelation.fc.",
}


def _rename_v1_keys(state_dict: Dict[str, Tensor], prefix: str) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        for old, new in _V1_KEYS.items():
            if rest.startswith(old):
                state_dict[f"{prefix}branches.{new}{rest[len(old) :]}"] = state_dict.pop(key)
                break


def build_relations(names: Sequence[str], channels: int, hidden: int) -> MultiRelation:
    """The :class:`MultiRelation` of the registered branches ``names`` (MODEL.FSOD.RELATIONS)."""
    names = [str(n) for n in names]
    known = sorted(name for name, _ in RELATION_REGISTRY)
    unknown = [n for n in names if n not in RELATION_REGISTRY]
    if unknown or len(set(names)) != len(names):
        raise ValueError(
            f"MODEL.FSOD.RELATIONS={names}: each entry must be a registered relation branch, "
            f"listed once; registered: {known}"
        )
    branches = {}
    for n in names:
        branch = RELATION_REGISTRY.get(n)(channels=channels, hidden=hidden)
        if not isinstance(branch, RelationBranch) or branch.cost not in (CHEAP, EXPENSIVE):
            raise TypeError(
                f"relation branch {n!r} must be a RelationBranch with cost 'cheap' or 'expensive'"
            )
        branches[n] = branch
    return MultiRelation(branches)
