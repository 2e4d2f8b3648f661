"""ImageNet weights in torch's own cache (``$TORCH_HOME/hub/checkpoints``), never a silent download.

On a machine without network the ImageNet arm fails at once with the exact file it needs.
Weights travel to an air-gapped machine with ``pack`` and ``unpack``::

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
import io
import os
import re
import shutil
import socket
import sys
import tarfile
import tempfile
from pathlib import Path

import torch
import torchvision

from .models import ARCHS, check_arch

MANIFEST = "SHA256SUMS"
_MEMBER_DIR = "checkpoints"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's convention: name-<sha256 prefix>.pth


class MissingWeightsError(FileNotFoundError):
    """ImageNet weights are not in torch's cache; the message says which file and how to get it."""


def imagenet_weights(arch: str) -> torchvision.models.WeightsEnum:
    check_arch(arch)
    return torchvision.models.get_model_weights(arch).IMAGENET1K_V1


def file_name(arch: str) -> str:
    """torchvision's file name for the arch's weights (the basename of the enum's URL)."""
    return os.path.basename(imagenet_weights(arch).url)


def checkpoints_dir() -> Path:
    """Where torch.hub caches weights; follows ``TORCH_HOME`` at call time."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def expected_path(arch: str) -> Path:
    return checkpoints_dir() / file_name(arch)


def is_cached(arch: str) -> bool:
    return expected_path(arch).is_file()


def missing_message(arch: str) -> str:
    path = expected_path(arch)
    return (
        f"ImageNet weights for {arch} are not cached: expected the file {path} "
        f"(torchvision's {file_name(arch)}, from {imagenet_weights(arch).url}). "
        f"No download is attempted. To get it: on a machine with network run "
        f"`python -m helpers.weights fetch {arch}`; to carry it to this machine run "
        f"`python -m helpers.weights pack weights.tar` there and "
        f"`python -m helpers.weights unpack weights.tar` here (set TORCH_HOME the same way "
        f"if you use a custom cache). Or train from scratch with pretrained=False."
    )


def require(arch: str) -> Path:
    """The cached weights file of ``arch``; :class:`MissingWeightsError` at once when absent."""
    path = expected_path(arch)
    if not path.is_file():
        raise MissingWeightsError(missing_message(arch))
    return path


def load_state_dict(arch: str) -> dict[str, torch.Tensor]:
    return torch.load(require(arch), map_location="cpu", weights_only=True)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def name_hash_ok(path: Path, digest: str | None = None) -> bool | None:
    """Whether the file's sha256 starts with the prefix in its name (None if the name has none)."""
    m = _HASH_IN_NAME.search(path.name)
    if not m:
        return None
    return (digest or sha256(path)).startswith(m.group(1))


# ---------------------------------------------------------------- CLI actions

def fetch(archs: list[str], timeout: float = 60.0) -> list[Path]:
    """Download missing weights with torchvision's hash-checked loader."""
    paths = []
    for arch in archs:
        path = expected_path(arch)
        if path.is_file():
            print(f"{arch}: already cached at {path}")
        else:
            print(f"{arch}: downloading {imagenet_weights(arch).url} -> {path}")
            old = socket.getdefaulttimeout()
            socket.setdefaulttimeout(timeout)  # an air-gapped host should fail, not hang
            try:
                imagenet_weights(arch).get_state_dict(progress=True, check_hash=True)
            except Exception as e:
                raise RuntimeError(
                    f"could not download the {arch} weights ({type(e).__name__}: {e}). "
                    f"Without network, fetch on another machine and use "
                    f"`python -m helpers.weights pack` / `unpack`.") from e
            finally:
                socket.setdefaulttimeout(old)
        paths.append(path)
    return paths


def pack(out_file: Path, archs: list[str] | None = None) -> Path:
    """Write a tar of the cached weight files plus a SHA256SUMS manifest (atomically)."""
    out_file = Path(out_file)
    wanted = archs or [a for a in ARCHS if is_cached(a)]
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
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(out_file.name + ".tmp")
    with tarfile.open(tmp, "w") as tar:
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        for p in files:
            tar.add(p, arcname=f"{_MEMBER_DIR}/{p.name}")
    os.replace(tmp, out_file)
    for line in lines:
        print(line, end="")
    print(f"packed {len(files)} file(s) into {out_file}")
    return out_file


def _parse_manifest(text: str, source: Path) -> dict[str, str]:
    known = {file_name(a) for a in ARCHS}
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
    for arch in ARCHS:
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
    parser = argparse.ArgumentParser(prog="python -m helpers.weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="download ImageNet weights into TORCH_HOME (needs network)")
    p.add_argument("archs", nargs="*", metavar="ARCH", help=f"default: all of {', '.join(ARCHS)}")
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
        if arch not in ARCHS:
            parser.error(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    try:
        if args.command == "fetch":
            fetch(archs or list(ARCHS))
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
