"""The six backbones of the two papers, with ImageNet or random weights and either head.

Heads:
- ``"replace"`` (paper A): the torchvision model with its last layer swapped for one with
  ``num_classes`` outputs.
- ``"dense1024"`` (paper B's Keras model): the convolutional base, then Flatten,
  Linear(n, 1024), ReLU, Linear(1024, num_classes). ``n`` depends on the image size and is
  found with a dummy forward (VGG-16 at 200 px: 512 * 6 * 6).

The dense1024 model keeps torchvision's module names for the convolutional base (the pooling
layer becomes an Identity and the last block is the new head), so ImageNet files, ``init_from``
checkpoints and Grad-CAM layers use the same keys for both heads.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

ARCHS = ("resnet18", "vgg11", "vgg16", "alexnet", "mobilenet_v3_large", "mobilenet_v3_small")
HEADS = ("replace", "dense1024")

# Smallest input side each arch accepts. VGG's five unpadded 2x2 max-pools need 32 px and
# AlexNet's stride-4 stem plus three 3x3/2 pools need 63 px (62 fails inside torch).
# ResNet and MobileNetV3 pad every strided layer and would run on smaller inputs, but their
# total stride is 32: below 32 px the last blocks only see padding, so we require 32.
MIN_IMAGE_SIZE = {
    "resnet18": 32,
    "vgg11": 32,
    "vgg16": 32,
    "alexnet": 63,
    "mobilenet_v3_large": 32,
    "mobilenet_v3_small": 32,
}

DENSE_WIDTH = 1024


def check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got {arch!r}")


def check_head(head: str) -> None:
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}; got {head!r}")


def head_prefixes(arch: str, head: str) -> tuple[str, ...]:
    """State-dict key prefixes of the layers that are new (never loaded from ImageNet or init_from)."""
    check_arch(arch)
    check_head(head)
    if arch == "resnet18":
        return ("fc.",)
    if head == "dense1024":
        return ("classifier.",)
    if arch.startswith("mobilenet_v3"):
        return ("classifier.3.",)
    return ("classifier.6.",)  # vgg, alexnet


def is_head_key(key: str, arch: str, head: str) -> bool:
    return key.startswith(head_prefixes(arch, head))


def _conv_base_features(model: nn.Module, arch: str, image_size: int) -> int:
    """Number of values the convolutional base yields per image (the Flatten width)."""
    if arch == "resnet18":
        base = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                             model.layer1, model.layer2, model.layer3, model.layer4)
    else:
        base = model.features
    was_training = base.training
    base.eval()  # BatchNorm in train mode would update running stats on the dummy input
    with torch.no_grad():
        out = base(torch.zeros(1, 3, image_size, image_size))
    base.train(was_training)
    return out[0].numel()


def get_model(arch: str, *, weights: bool, head: str = "replace", num_classes: int,
              image_size: int = 224) -> nn.Module:
    """Build ``arch`` with ImageNet weights from torch's cache (``weights=True``) or random ones.

    ImageNet weights never trigger a download: a missing file raises
    :class:`helpers.weights.MissingWeightsError` naming the file (see ``python -m helpers.weights``).
    """
    check_arch(arch)
    check_head(head)
    if image_size < MIN_IMAGE_SIZE[arch]:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE[arch]} px for {arch}; "
                         f"got {image_size}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2; got {num_classes}")

    if weights:
        from . import weights as weights_mod
        weights_mod.require(arch)  # fails fast with the file path instead of downloading
        enum = weights_mod.imagenet_weights(arch)
    else:
        enum = None
    model = torchvision.models.get_model(arch, weights=enum)

    if head == "replace":
        if arch == "resnet18":
            model.fc = nn.Linear(model.fc.in_features, num_classes)
        else:  # vgg, alexnet, mobilenet_v3: the last Linear of `classifier`
            last = model.classifier[-1]
            model.classifier[-1] = nn.Linear(last.in_features, num_classes)
    else:
        n = _conv_base_features(model, arch, image_size)
        # torchvision's forward is base -> avgpool -> flatten -> fc/classifier;
        # an Identity pool makes that exactly Flatten + Dense as in paper B.
        model.avgpool = nn.Identity()
        dense = nn.Sequential(nn.Linear(n, DENSE_WIDTH), nn.ReLU(inplace=True),
                              nn.Linear(DENSE_WIDTH, num_classes))
        if arch == "resnet18":
            model.fc = dense
        else:
            model.classifier = dense
    return model


def gradcam_target_layer(model: nn.Module, arch: str) -> nn.Module:
    """The last convolutional block, the usual Grad-CAM target.

    The same for both heads, because the dense1024 model keeps torchvision's module names.
    """
    check_arch(arch)
    if arch == "resnet18":
        return model.layer4[-1]
    if arch.startswith("mobilenet_v3"):
        return model.features[-1]  # the final 1x1 Conv-BN-Hardswish block
    # vgg/alexnet: the last ReLU after the last conv (before the final max-pool), as in
    # pytorch-grad-cam's examples for VGG (features[-1] is the pool, which halves resolution).
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    return model.features[convs[-1] + 1]
