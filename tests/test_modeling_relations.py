"""Relation branches: the registry, pairwise == dense for every branch, top-k pruning, a branch
added from outside the package, and the config keys that select them."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch import nn

from fsod_d2.modeling.relations import RELATION_REGISTRY, RelationBranch, build_relations

from .common import get_tiny_cfg, synthetic_episode


class CosineRelation(RelationBranch):
    """Example extra branch: scaled cosine similarity of projected, pooled features."""

    cost = "cheap"

    def __init__(self, channels: int, hidden: int):
        super().__init__(channels, hidden)
        self.proj = nn.Linear(channels, hidden)
        self.scale = nn.Parameter(torch.tensor(5.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def embed_query(self, x):
        return F.normalize(self.proj(x.mean(dim=(2, 3))), dim=-1)

    embed_support = embed_query

    def pair_logits(self, q, s):
        return self.scale * (q * s).sum(-1) + self.bias


@pytest.fixture
def cosine_registered():
    RELATION_REGISTRY.register(CosineRelation)
    try:
        yield "CosineRelation"
    finally:
        RELATION_REGISTRY._obj_map.pop("CosineRelation")


def _embeddings(rel, num_rois=40, num_classes=5, channels=16, size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    rois = torch.randn(num_rois, channels, size, size, generator=g)
    protos = torch.randn(num_classes, channels, size, size, generator=g)
    return rel.embed_queries(rois), rel.embed_supports(protos)


@pytest.mark.parametrize("name", ["GlobalRelation", "LocalRelation", "PatchRelation"])
def test_builtin_branches_are_registered(name):
    assert issubclass(RELATION_REGISTRY.get(name), RelationBranch)


def test_every_registered_branch_pairwise_equals_dense(cosine_registered):
    """Training scores sampled pairs, inference dense ROI x class grids: same numbers, for every
    branch in the registry (the built-in ones and any other registered at the time)."""
    names = sorted(name for name, _ in RELATION_REGISTRY)
    assert {"GlobalRelation", "LocalRelation", "PatchRelation", cosine_registered} <= set(names)
    torch.manual_seed(0)
    for name in names:
        rel = build_relations([name], channels=16, hidden=8).eval()
        # 40 x 5 = 200 pairs, and a chunked pass (> 1024 pairs) below
        for num_rois in (40, 300):
            q, s = _embeddings(rel, num_rois=num_rois)
            ri = torch.arange(num_rois).repeat_interleave(5)
            ci = torch.arange(5).repeat(num_rois)
            with torch.no_grad():
                dense = rel.dense(q, s)
                pairwise = rel(q, s, ri, ci).view(num_rois, 5)
            assert dense.shape == (num_rois, 5)
            assert torch.allclose(dense, pairwise, atol=1e-5), name


def test_topk_runs_expensive_branches_on_the_top_classes_only():
    rel = build_relations(
        ["GlobalRelation", "LocalRelation", "PatchRelation"], channels=16, hidden=8
    ).eval()
    q, s = _embeddings(rel)
    with torch.no_grad():
        full = rel.dense(q, s)
        cheap = rel.dense(q, s, topk=0) - rel.branches["PatchRelation"].dense(
            q["PatchRelation"], s["PatchRelation"]
        )
        pruned = rel.dense(q, s, topk=2)
    kept = torch.isfinite(pruned)
    assert (kept.sum(1) == 2).all()
    assert torch.equal(kept, torch.zeros_like(kept).scatter_(1, cheap.topk(2, dim=1).indices, True))
    assert torch.allclose(pruned[kept], full[kept], atol=1e-5)


def test_an_added_branch_trains_a_step(cosine_registered):
    """Adding a branch = a RelationBranch subclass + its registration; nothing else changes."""
    cfg = get_tiny_cfg("MODEL.FSOD.RELATIONS", [cosine_registered, "PatchRelation"])
    torch.manual_seed(0)
    model = build_model(cfg)
    assert list(model.roi_heads.relation.branches) == [cosine_registered, "PatchRelation"]
    branch = model.roi_heads.relation.branches[cosine_registered]
    before = {n: p.detach().clone() for n, p in branch.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    batch = [synthetic_episode(cfg, rng, [0, 1], [1, 2, 0])]
    model.train()
    with EventStorage(0):
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in branch.parameters())
    optimizer.step()
    assert any(not torch.equal(before[n], p) for n, p in branch.named_parameters())
    # and it scores at inference through the same dense path
    assert model.roi_heads.relation.cheap == [cosine_registered]


def test_relations_config_errors():
    with pytest.raises(ValueError, match="registered: .*GlobalRelation"):
        build_model(get_tiny_cfg("MODEL.FSOD.RELATIONS", ["GlobalRelation", "Nope"]))
    with pytest.raises(ValueError, match="listed once"):
        build_model(get_tiny_cfg("MODEL.FSOD.RELATIONS", ["GlobalRelation", "GlobalRelation"]))
    with pytest.raises(ValueError, match="empty"):
        build_model(get_tiny_cfg("MODEL.FSOD.RELATIONS", []))


@pytest.mark.parametrize(
    "old, instead",
    [("GLOBAL", "'LocalRelation', 'PatchRelation'"), ("PATCH", "'LocalRelation'\\]")],
)
def test_removed_relation_switches_say_what_to_write(old, instead, tmp_path):
    with pytest.raises(KeyError, match=f"MODEL.FSOD.RELATIONS.*{instead}"):
        get_tiny_cfg(f"MODEL.FSOD.{old}_RELATION", False)
    yaml = tmp_path / "old.yaml"
    yaml.write_text(f"MODEL:\n  FSOD:\n    {old}_RELATION: False\n")
    cfg = get_tiny_cfg()
    with pytest.raises(KeyError, match=f"{old}_RELATION was renamed to MODEL.FSOD.RELATIONS"):
        cfg.merge_from_file(str(yaml))
