"""Fold eval-mode BatchNorms into the convs before them, for faster inference."""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fuse_batchnorms(model: nn.Module) -> nn.Module:
    """Fold each (conv, BN) pair that a module lists in `conv_bn_pairs`, in place; the BN becomes Identity.

    One pass over memory less per layer and one full-size temporary less, which on CPU (memory-bound
    at full resolution) matters. Changes outputs by ~1e-5. The state dict no longer matches the
    checkpoint, so fuse only after loading, and only an eval-mode model.
    """
    for module in list(model.modules()):
        for conv_name, bn_name in getattr(module, "conv_bn_pairs", ()):
            setattr(module, conv_name, fuse_conv_bn_eval(getattr(module, conv_name), getattr(module, bn_name)))
            setattr(module, bn_name, nn.Identity())
    return model
