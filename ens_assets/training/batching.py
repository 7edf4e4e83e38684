"""How a set of in-memory crops is cut into batches: by training's epoch loop and the subset-ensemble core."""

from __future__ import annotations

import torch


def batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split a permutation into batches; a last batch of one joins the previous (BatchNorm needs two)."""
    chunks = list(torch.split(order, batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        last = chunks.pop()  # pop first: indexing after the pop must address the new last batch
        chunks[-1] = torch.cat([chunks[-1], last])
    return chunks
