"""Logits only where a loss is taken: the output head runs on the selected hidden states alone.

In SFT most of a packed row is answer, but every prompt token would still pay for the vocabulary
projection, its softmax and their backward. A forward pre-hook on the output embedding hands it
only the kept positions, so `model(...).logits` comes back as [N, V] for the N kept positions.
A hook rather than a wrapper module: DeepSpeed (ZeRO-3 included) still sees and gathers the same
modules, and checkpoints keep their names.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch


@contextmanager
def head_only_at(model: torch.nn.Module, keep: torch.Tensor) -> Iterator[None]:
    """While active, `model`'s output head computes logits only at `keep` ([B, T] bool) -> [N, V]."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embedding to restrict")

    def select(module, args):
        return (args[0][keep],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


def selective_forward(call: Callable[..., Any], model: torch.nn.Module) -> Callable[..., Any]:
    """`call` (the model, or DeepSpeed's engine around it) with one more keyword, `logits_at` ([B, T]
    bool): the forward every stage's loss function is handed."""

    def forward(*args, logits_at: torch.Tensor | None = None, **kwargs):
        if logits_at is None:
            return call(*args, **kwargs)
        with head_only_at(model, logits_at):
            return call(*args, **kwargs)

    return forward
