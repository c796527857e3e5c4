"""``KGBatch``: tokenised knowledge sentences with the positions that predict their tails."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from kcs_tl.validate import InputValueError

IGNORE_INDEX = -100
"""Label value at positions that predict nothing (PyTorch's cross-entropy default)."""


@dataclass(frozen=True)
class KGBatch:
    """Right-padded token rows, one per (triplet, template) sentence.

    Logits at position ``p`` score token ``p + 1``, so the positions that
    *predict* a tail token are the ones just before it: ``label_mask`` is True
    there and ``labels`` holds the token to predict (``IGNORE_INDEX``
    elsewhere). Right padding needs no attention mask for a causal model with
    absolute positions: real tokens never attend to the padding after them.
    """

    tokens: Int[Tensor, "batch pos"]
    labels: Int[Tensor, "batch pos"]
    label_mask: Bool[Tensor, "batch pos"]
    first_label_pos: Int[Tensor, "batch"]
    """Position predicting the first tail token (for top-k accuracy)."""
    lengths: Int[Tensor, "batch"]
    """Number of real (unpadded) tokens per row."""
    triplet_index: Int[Tensor, "batch"]
    """Row -> index of its triplet in the encoded graph."""
    sentences: list[str]
    templates: list[str]
    """Row -> the template it was verbalised with."""

    def __post_init__(self) -> None:
        n = self.tokens.shape[0]
        sizes = {name: len(getattr(self, name)) for name in
                 ("labels", "label_mask", "first_label_pos", "lengths", "triplet_index", "sentences", "templates")}
        if any(size != n for size in sizes.values()) or self.labels.shape != self.tokens.shape \
                or self.label_mask.shape != self.tokens.shape:
            raise InputValueError(f"KGBatch fields disagree on shape: tokens {tuple(self.tokens.shape)}, {sizes}")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, idx: int | slice | list[int] | Tensor) -> KGBatch:
        """Rows ``idx`` as a new batch (an int keeps the batch axis), trimmed to its longest row."""
        rows = torch.arange(len(self))[idx].reshape(-1)
        width = int(self.lengths[rows].max()) if len(rows) else 0
        keep = rows.to(self.tokens.device)
        return KGBatch(
            tokens=self.tokens[keep, :width],
            labels=self.labels[keep, :width],
            label_mask=self.label_mask[keep, :width],
            first_label_pos=self.first_label_pos[keep],
            lengths=self.lengths[keep],
            triplet_index=self.triplet_index[keep],
            sentences=[self.sentences[i] for i in rows.tolist()],
            templates=[self.templates[i] for i in rows.tolist()],
        )

    def to(self, device: torch.device | str) -> KGBatch:
        """The same batch with its tensors on ``device``."""
        return replace(self, **{name: getattr(self, name).to(device) for name in
                                ("tokens", "labels", "label_mask", "first_label_pos", "lengths", "triplet_index")})

    def __repr__(self) -> str:
        return f"KGBatch({len(self)} sentences, pos={self.tokens.shape[1]}, e.g. {self.sentences[:2]!r})"
