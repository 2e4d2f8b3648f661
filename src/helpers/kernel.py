"""The notebook steps' Jupyter kernel: sockets no other step can take, and a start that fails fast.

Kernels on jupyter_client's default TCP transport pick five free ports, close them, and bind
them again a moment later in the kernel process; steps that start together (``make report`` on
several cores, cluster jobs sharing a node, the test suite) can take each other's ports in
between, and the loser dies with ``Address already in use`` (papermill issue 511). Three parts
remove that and make the remaining failures quick and plain:

- :class:`IPCProvisioner` (entry point ``helpers-ipc``) starts each kernel on IPC transport, with
  its Unix sockets in a fresh folder of its own: there is no shared namespace to race in.
- :func:`launch` (``python -m helpers.kernel -f FILE``) is ipykernel's launcher, except that a
  kernel whose start raises exits at once; left to the interpreter, zmq's context teardown can
  hang, and the client then waits the whole start timeout for a kernel that will never answer.
- ``RetryEngine`` (papermill engine ``helpers``: ``papermill --engine helpers``) starts a kernel
  that died while starting once more, then fails with one line naming the notebook.

``python -m helpers.kernel install`` writes the ``python3`` kernelspec of this environment
(``make venv`` runs it) with the provisioner and the launcher.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

from jupyter_client.provisioning import LocalProvisioner

KERNEL_NAME = "python3"
PROVISIONER = "helpers-ipc"          # the entry point in pyproject.toml
ENGINE = "helpers"                   # papermill's --engine
DIED = "Kernel died before replying to kernel_info"   # jupyter_client's words
MAX_SOCKET_PATH = 90                 # sun_path holds 107 bytes; "<folder>/k-<port>" must fit


def socket_folder() -> str:
    """A fresh folder for one kernel's sockets, in $TMPDIR unless that path is too long for a socket."""
    base = tempfile.gettempdir()
    if len(base) > MAX_SOCKET_PATH - 20:
        base = "/tmp"
    return tempfile.mkdtemp(prefix="kernel-", dir=base)


class IPCProvisioner(LocalProvisioner):
    """A local kernel on IPC transport, its sockets in a folder that only it uses."""

    _sockets: str = ""

    async def pre_launch(self, **kwargs):
        km = self.parent
        if km is not None and os.name == "posix" and not self._sockets:   # a restart keeps its folder
            self._sockets = socket_folder()
            km.transport = "ipc"
            km.ip = os.path.join(self._sockets, "k")
            km.cache_ports = False           # the port cache is for TCP; IPC "ports" are file names
        return await super().pre_launch(**kwargs)

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart=restart)
        if not restart and self._sockets:
            shutil.rmtree(self._sockets, ignore_errors=True)
            self._sockets = ""


def launch(argv: list[str] | None = None) -> None:
    """ipykernel's launcher; a start that raises ends the process at once with status 1."""
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    try:
        app.initialize(argv)
    except BaseException:  # noqa: BLE001 - a config error arrives as SystemExit
        traceback.print_exc()
        sys.stderr.write("kernel: could not start; exiting now so that the client notices\n")
        sys.stderr.flush()
        os._exit(1)
    app.start()


def kernel_json(prefix: str | os.PathLike = sys.prefix) -> Path:
    return Path(prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME / "kernel.json"


def install(prefix: str | os.PathLike = sys.prefix) -> Path:
    """ipykernel's own ``python3`` kernelspec for this interpreter, with our provisioner and launcher."""
    from ipykernel.kernelspec import install as ipykernel_install

    folder = Path(ipykernel_install(prefix=str(prefix), kernel_name=KERNEL_NAME))
    spec = json.loads((folder / "kernel.json").read_text())
    argv = spec["argv"]
    argv[argv.index("ipykernel_launcher")] = "helpers.kernel"
    spec.setdefault("metadata", {})["kernel_provisioner"] = {"provisioner_name": PROVISIONER}
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
    return folder / "kernel.json"


class KernelSetupError(RuntimeError):
    """The kernel a step would use is not this project's (it would start on TCP ports)."""


def check_kernelspec(name: str = KERNEL_NAME) -> None:
    """Raise KernelSetupError unless kernel ``name`` starts through :class:`IPCProvisioner`."""
    from jupyter_client.kernelspec import KernelSpecManager

    ksm = KernelSpecManager()
    found = ksm.find_kernel_specs().get(name)
    if found is None:
        raise KernelSetupError(f"no Jupyter kernel named {name!r}: run `python -m helpers.kernel install` "
                               f"(make venv does) to write {kernel_json()}")
    spec = ksm.get_kernel_spec(name)
    if spec.metadata.get("kernel_provisioner", {}).get("provisioner_name") != PROVISIONER:
        raise KernelSetupError(
            f"the Jupyter kernel {name!r} at {found} starts on TCP ports, which notebook steps that start "
            f"together can take from each other: run `python -m helpers.kernel install` (make venv does) "
            f"to write {kernel_json()}" + ("" if Path(found) == kernel_json().parent else
                                           f", and remove {found}, which comes first on Jupyter's path"))


class KernelStartError(RuntimeError):
    """A step's kernel died while starting, twice."""


def _retry_engine():
    from papermill.engines import NBClientEngine

    class RetryEngine(NBClientEngine):
        """papermill's nbclient engine; a kernel that dies while starting gets one more start."""

        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            check_kernelspec(kernel_name)
            step = kwargs.get("input_path") or "the notebook"
            for attempt in (1, 2):
                try:
                    return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
                except RuntimeError as exc:
                    if DIED not in str(exc):
                        raise
                    if attempt == 2:
                        raise KernelStartError(f"{step}: its kernel died while starting, twice "
                                               f"(its own error is printed above)") from None
                    print(f"{step}: its kernel died while starting; starting another", file=sys.stderr, flush=True)

    return RetryEngine


def __getattr__(name: str):
    # papermill loads its engines by entry point; building the class here keeps papermill out of
    # the kernel process, which imports this module to launch
    if name == "RetryEngine":
        return _retry_engine()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["install"]:
        print(f"wrote {install(argv[1] if len(argv) > 1 else sys.prefix)}")
        return
    launch(argv)


if __name__ == "__main__":
    # as ipykernel_launcher: the working folder leaves sys.path while the kernel loads
    # (InteractiveShellApp puts it back)
    if sys.path and (sys.path[0] == "" or Path(sys.path[0]) == Path.cwd()):
        del sys.path[0]
    main()
