"""A trained model as one module that takes images and returns logits, as it is served and logged.

During training the loader normalises the batch and the engine wraps each forward in the activation
swap and, at evaluation, flip TTA. A model handed to someone else must do all of that itself, or its
predictions differ from the error the run reported: `Classifier` holds the dataset's mean and std and
the config's tricks, and takes float images in [0, 1], NCHW.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sweeplab import models
from sweeplab.models import tweaks


class Classifier(nn.Module):
    """`model` behind the loader's normalisation, the activation swap and (optionally) flip TTA."""

    def __init__(
        self,
        model: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        normalize: bool = True,
        activation: str = "relu",
        celu_alpha: float = 1.0,
        flip_tta: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        channels = len(mean)
        self.register_buffer("mean", torch.tensor(mean if normalize else [0.0] * channels).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std if normalize else [1.0] * channels).view(1, -1, 1, 1))
        self.activation, self.celu_alpha, self.flip_tta = activation, celu_alpha, flip_tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of float images in [0, 1], shape (N, C, H, W)."""
        x = (images - self.mean) / self.std
        with tweaks.activation(self.activation, self.celu_alpha):
            logits = self.model(x)
            if self.flip_tta:  # as the engine evaluated it: the mean of the image's and its mirror's logits
                logits = (logits + self.model(x.flip(3))) / 2
        return logits


def from_state(state: dict[str, Any], shape: tuple[int, int, int], num_classes: int, mean: Any, std: Any) -> Classifier:
    """The Classifier of a checkpoint's state (its config and weights), in fp32 on the CPU, in eval mode."""
    config = state["config"]
    model_section = dict(config["model"])
    name = model_section.pop("name")
    model = models.build(name, num_classes, shape[0], **model_section)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()})
    augment, train = config["augment"], config["train"]
    out = Classifier(
        model,
        tuple(mean),
        tuple(std),
        normalize=augment["normalize"],
        activation=train["activation"],
        celu_alpha=train["celu_alpha"],
        flip_tta=train["flip_tta"],
    )
    return out.float().eval()
