"""Post-activation of raw logits (channel axis -3, so C x H x W and N x C x H x W both work)."""

from __future__ import annotations

import torch

CHANNELS = -3


def inst_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """INST heads: softmax, keeping [P(inner), P(contour)] (channel 0 is background)."""
    return torch.softmax(logits.float(), dim=CHANNELS).narrow(CHANNELS, 1, 2)


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """TYPE heads and Patch-Class (one column per 144-px cell): softmax over classes."""
    return torch.softmax(logits.float(), dim=CHANNELS)


def class_index(logits: torch.Tensor) -> torch.Tensor:
    """TYPE heads and Patch-Class: the most likely class (argmax of logits equals argmax of softmax)."""
    return logits.argmax(dim=CHANNELS)


def probabilities(key: str, logits: torch.Tensor) -> torch.Tensor:
    """The probabilities the Predictor protocol stores for output `key`."""
    return inst_probabilities(logits) if key.endswith("-INST") else class_probabilities(logits)
