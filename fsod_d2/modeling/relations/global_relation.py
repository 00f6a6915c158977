"""Global relation (Fan et al.): pooled query and support vectors, concatenated, then an MLP.

The first linear layer acts on the concatenation, so it is split into a query part and a
support part, computed once per ROI and once per class and added per pair.
"""

from torch import Tensor, nn

from .base import CHEAP, RELATION_REGISTRY, RelationBranch


@RELATION_REGISTRY.register()
class GlobalRelation(RelationBranch):
    """MLP on the concatenated average-pooled ROI and support features."""

    cost = CHEAP

    def __init__(self, channels: int, hidden: int):
        super().__init__(channels, hidden)
        self.query_proj = nn.Linear(channels, hidden)
        self.support_proj = nn.Linear(channels, hidden, bias=False)
        self.mlp = nn.Sequential(
            nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def embed_query(self, x: Tensor) -> Tensor:
        return self.query_proj(x.mean(dim=(2, 3)))

    def embed_support(self, x: Tensor) -> Tensor:
        return self.support_proj(x.mean(dim=(2, 3)))

    def pair_logits(self, q: Tensor, s: Tensor) -> Tensor:
        return self.mlp(q + s).squeeze(-1)
