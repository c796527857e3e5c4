"""Loading a zoo model's weights into a freshly built model, strictly for parameters."""

from __future__ import annotations


def load_weights(model, state: dict) -> None:
    """Load every parameter of ``model`` from ``state`` (buffers such as rotary tables may be absent)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = {n for n, _ in model.named_parameters()}
    if unexpected or params & set(missing):
        raise RuntimeError(f"weights do not match the config: missing {sorted(params & set(missing))}, "
                           f"unexpected {unexpected}")
