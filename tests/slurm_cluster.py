"""A throwaway single-node SLURM cluster on localhost, with accounting, for the SLURM tests.

The layout of the SLURM executor plugin's own CI (koesterlab/setup-slurm-action): munge,
MariaDB, slurmdbd, slurmctld and slurmd on one host. Accounting is not optional: without
slurmdbd, ``sacct`` answers "accounting storage is disabled" and snakemake-executor-plugin-slurm
never sees a job finish.

Everything lives in one temporary folder: the munge key and socket, MariaDB's data directory,
the configs, state, spool and logs. Every daemon gets free ports of its own and runs in the
foreground as a child of this process, so ``stop()`` ends exactly the processes ``start()``
began, by pid. Clients find the cluster through ``SLURM_CONF`` and an ``srun`` shim on ``PATH``
(both in ``Cluster.env``).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# The Debian packages (installed by .ci/run) and the programs the cluster needs from them.
PACKAGES = "slurm-wlm slurmdbd munge mariadb-server"
PROGRAMS = ("mungekey", "munged", "mariadb-install-db", "mariadbd", "slurmdbd", "slurmctld", "slurmd",
            "sacctmgr", "scontrol", "sbatch", "srun", "sacct", "sinfo", "squeue", "scancel")
CLUSTER = "helpers"
ACCOUNT = "ci"
PARTITION = "debug"


def unavailable() -> str | None:
    """Why a cluster cannot be started here, or None when it can."""
    if os.name != "posix" or os.geteuid() != 0:
        return "starting a SLURM cluster needs root (slurmd runs jobs as their user)"
    missing = [p for p in PROGRAMS if not _which(p)]
    if missing:
        return (f"SLURM cluster programs not found: {', '.join(missing)} "
                f"(apt-get install {PACKAGES}; .ci/run does this)")
    return None


def _which(program: str) -> str | None:
    # the daemons live in /usr/sbin, which a non-login root shell may lack on its PATH
    return shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line() -> str:
    """slurmd's own description of this machine (CPUs, sockets, cores, memory)."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    return next(line for line in out.splitlines() if line.startswith("NodeName="))


class ClusterError(RuntimeError):
    pass


class Cluster:
    def __init__(self):
        # A short path: unix sockets allow ~100 characters. 0755, as munged requires of a socket's folder.
        self.dir = Path(tempfile.mkdtemp(prefix="slurm-"))
        self.dir.chmod(0o755)
        self.conf = self.dir / "slurm.conf"
        self.bin = self.dir / "bin"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf),
                    "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.account, self.partition = ACCOUNT, PARTITION

    # ------------------------------------------------------------------ daemons

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.dir / f"{name}.out", "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs.append((name, proc))
        return proc

    def _logs(self) -> str:
        parts = []
        for path in sorted(self.dir.glob("*.out")) + sorted(self.dir.glob("*.log")):
            text = path.read_text(errors="replace").strip().splitlines()[-15:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def _wait(self, what: str, check, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise ClusterError(f"{name} exited with {proc.returncode} while waiting for {what}\n{self._logs()}")
            if check():
                return
            time.sleep(0.3)
        raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}\n{self._logs()}")

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        out = subprocess.run([_which(argv[0]), *argv[1:]], capture_output=True, text=True,
                             env=self.env, timeout=60)
        if check and out.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")
        return out

    def _ok(self, *argv: str) -> bool:
        return self.run(*argv, check=False).returncode == 0

    def start(self) -> "Cluster":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        d = self.dir
        host = socket.gethostname().split(".")[0]
        munge_socket = d / "munge.socket"
        ports = {name: _free_port() for name in ("mysql", "slurmdbd", "slurmctld", "slurmd")}
        for sub in ("munge", "state", "spool"):
            (d / sub).mkdir(mode=0o700)
        # Inside a job, snakemake-executor-plugin-slurm-jobstep starts the rule with `srun`, after
        # dropping every SLURM_* variable, SLURM_CONF included; a real cluster's srun finds its
        # config at the default path (or configless), this one's through this shim on PATH.
        self.bin.mkdir()
        srun = self.bin / "srun"
        srun.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {_which("srun")} "$@"\n')
        srun.chmod(0o755)

        subprocess.run([_which("mungekey"), "--create", f"--keyfile={d / 'munge' / 'munge.key'}"],
                       check=True, capture_output=True)
        self._spawn("munged", [_which("munged"), "--foreground", f"--key-file={d / 'munge' / 'munge.key'}",
                               f"--socket={munge_socket}", f"--pid-file={d / 'munge' / 'munged.pid'}",
                               f"--log-file={d / 'munged.log'}", f"--seed-file={d / 'munge' / 'seed'}"])
        self._wait("munged's socket", munge_socket.exists, 20)

        # MariaDB without grant tables: reachable only on 127.0.0.1, on a port of its own, for this run.
        out = subprocess.run([_which("mariadb-install-db"), "--no-defaults", f"--datadir={d / 'db'}", "--user=root",
                              "--auth-root-authentication-method=normal", "--skip-test-db"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise ClusterError(f"mariadb-install-db failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
        self._spawn("mariadbd", [_which("mariadbd"), "--no-defaults", f"--datadir={d / 'db'}", "--user=root",
                                 f"--socket={d / 'mysql.sock'}", f"--port={ports['mysql']}",
                                 "--bind-address=127.0.0.1", f"--pid-file={d / 'mysql.pid'}",
                                 "--skip-grant-tables", f"--log-error={d / 'mariadb.log'}",
                                 "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M"])
        self._wait("MariaDB", lambda: _listening(ports["mysql"]), 60)

        auth = f"AuthType=auth/munge\nAuthInfo=socket={munge_socket}\n"
        dbd = d / "slurmdbd.conf"   # read from SLURM_CONF's folder; slurmdbd wants it private
        dbd.write_text(
            f"{auth}DbdHost=localhost\nDbdAddr=127.0.0.1\nDbdPort={ports['slurmdbd']}\nSlurmUser=root\n"
            f"PidFile={d / 'slurmdbd.pid'}\nLogFile={d / 'slurmdbd.log'}\n"
            f"StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\nStoragePort={ports['mysql']}\n"
            f"StorageUser=slurm\nStoragePass=slurm\nStorageLoc=slurm_acct_db\n")
        dbd.chmod(0o600)
        self.conf.write_text(
            f"ClusterName={CLUSTER}\nSlurmctldHost={host}(127.0.0.1)\n"
            f"SlurmctldPort={ports['slurmctld']}\nSlurmdPort={ports['slurmd']}\n"
            f"SlurmUser=root\nSlurmdUser=root\n{auth}"
            f"StateSaveLocation={d / 'state'}\nSlurmdSpoolDir={d / 'spool'}\n"
            f"SlurmctldPidFile={d / 'slurmctld.pid'}\nSlurmdPidFile={d / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={d / 'slurmctld.log'}\nSlurmdLogFile={d / 'slurmd.log'}\n"
            # no cgroups in containers: track job processes through /proc
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n"
            "MpiDefault=none\nReturnToService=2\nSchedulerType=sched/backfill\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\n"
            f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\n"
            f"AccountingStoragePort={ports['slurmdbd']}\nAccountingStoreFlags=job_comment\n"
            f"AccountingStoragePass={munge_socket}\n"   # the munge socket, for slurmdbd connections
            # scancel: SIGTERM, then SIGKILL after KillWait seconds
            "KillWait=5\nInactiveLimit=0\n"
            f"{_node_line()} NodeAddr=127.0.0.1 State=UNKNOWN\n"
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n")

        self._spawn("slurmdbd", [_which("slurmdbd"), "-D"])
        self._wait("slurmdbd", lambda: self._ok("sacctmgr", "-n", "show", "cluster"), 60)
        self.run("sacctmgr", "-i", "add", "cluster", CLUSTER)
        self.run("sacctmgr", "-i", "add", "account", ACCOUNT, f"Cluster={CLUSTER}",
                 "Description=tests", "Organization=tests")
        self.run("sacctmgr", "-i", "add", "user", "root", f"Account={ACCOUNT}", f"Cluster={CLUSTER}")

        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait("slurmctld", lambda: self._ok("scontrol", "ping"), 60)
        self._spawn("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf)])
        self._wait("the node to be idle in sinfo",
                   lambda: self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip() == "idle", 60)

    def stop(self) -> None:
        """Cancel what still runs, then end every daemon this object started, newest first."""
        if any(name == "slurmctld" and proc.poll() is None for name, proc in self.procs):
            self.run("scancel", f"--partition={PARTITION}", check=False)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.run("squeue", "-h", check=False).stdout.strip():
                time.sleep(0.5)
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
