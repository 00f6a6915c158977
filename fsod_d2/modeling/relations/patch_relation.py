"""Patch relation (Fan et al.): concatenated query and support maps through a small conv stack.

The first 1x1 conv acts on the concatenation, so it is split into a query and a support part,
computed once per ROI and once per class and added per pair. The conv stack runs per pair, so
this branch is the expensive one (see ``MODEL.FSOD.PATCH_TOPK``).
"""

from torch import Tensor, nn

from .base import EXPENSIVE, RELATION_REGISTRY, RelationBranch


@RELATION_REGISTRY.register()
class PatchRelation(RelationBranch):
    """1x1 conv of the concatenated maps, 3x3 and 1x1 convs, average pool, linear layer."""

    cost = EXPENSIVE

    def __init__(self, channels: int, hidden: int):
        super().__init__(channels, hidden)
        self.query_proj = nn.Conv2d(channels, hidden, 1)
        self.support_proj = nn.Conv2d(channels, hidden, 1, bias=False)
        self.convs = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(hidden, 1)

    def embed_query(self, x: Tensor) -> Tensor:
        return self.query_proj(x)

    def embed_support(self, x: Tensor) -> Tensor:
        return self.support_proj(x)

    def pair_logits(self, q: Tensor, s: Tensor) -> Tensor:
        x = q + s  # (*L, hidden, h, w)
        lead = x.shape[:-3]
        x = self.convs(x.reshape(-1, *x.shape[-3:])).mean(dim=(2, 3))
        return self.fc(x).squeeze(-1).reshape(lead)
