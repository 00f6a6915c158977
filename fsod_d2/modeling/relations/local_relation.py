"""Local relation (Fan et al.): depth-wise correlation of 1x1-reduced query and support maps."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import CHEAP, RELATION_REGISTRY, RelationBranch


@RELATION_REGISTRY.register()
class LocalRelation(RelationBranch):
    """Per channel, the mean over positions of query x support (shared 1x1 reduction), then a
    linear layer."""

    cost = CHEAP

    def __init__(self, channels: int, hidden: int):
        super().__init__(channels, hidden)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.fc = nn.Linear(hidden, 1)

    def embed_query(self, x: Tensor) -> Tensor:
        return self.reduce(x).flatten(2)  # (M, hidden, h*w)

    embed_support = embed_query

    def pair_logits(self, q: Tensor, s: Tensor) -> Tensor:
        # einsum broadcasts the leading dims without materialising the (R, N, hidden, h*w) product
        return self._logits(torch.einsum("...cs,...cs->...c", q, s), q.shape[-1])

    def dense(self, q: Tensor, s: Tensor) -> Tensor:
        # every (ROI, class) pair as one contraction with named dims: ONNX Runtime's shape
        # inference takes a broadcast "..." dim of Einsum for size 1 (wrong buffers at run time)
        return self._logits(torch.einsum("rcs,ncs->rnc", q, s), q.shape[-1])

    def _logits(self, corr: Tensor, positions: int) -> Tensor:
        return self.fc(F.relu(corr / positions)).squeeze(-1)
