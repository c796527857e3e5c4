"""Shared fixtures: tiny random HookedTransformers built offline."""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig


def tiny_model(seed: int = 0, n_layers: int = 2, d_mlp: int = 64) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=d_mlp, d_vocab=50,
        act_fn="gelu", normalization_type="LN", seed=seed,
    )
    model = HookedTransformer(cfg)
    model.eval()
    return model


@pytest.fixture
def model() -> HookedTransformer:
    return tiny_model()


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(1))
