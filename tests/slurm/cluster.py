"""A throw-away SLURM cluster on this one machine (munge, slurmctld, one slurmd per node) with fake GPUs.

Used by the SLURM tests and by CI: ``python tests/slurm/cluster.py {check,install,start,stop} ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEBIAN_PACKAGES = ["munge", "slurmctld", "slurmd", "slurm-client"]
# Binaries the cluster needs; a missing one triggers the Debian install.
REQUIRED_BINARIES = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo"]
SBIN_DIRS = ["/usr/sbin", "/sbin", "/usr/bin"]
# Job steps start `srun` with SLURM_CONF removed from the environment (the jobstep executor drops SLURM_* variables),
# so srun reads the compiled-in default path: the cluster links its configuration there while it runs.
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "test-cluster.marker"  # written into a cluster's folder: its configuration may be unlinked once it is dead


class ClusterUnavailable(RuntimeError):
    """This machine cannot host the test cluster (not root, no apt, ...); the message says why."""


def which(name: str) -> str | None:
    """Find a binary on PATH or in the sbin folders (daemons live there and root's PATH may lack them)."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))


def missing_binaries() -> list[str]:
    return [name for name in REQUIRED_BINARIES if which(name) is None]


def unavailable_reason() -> str | None:
    """Why this machine cannot host the cluster, or None when it can (installing packages if needed)."""
    if platform.system() != "Linux":
        return f"a SLURM test cluster needs Linux, this is {platform.system()}"
    if os.geteuid() != 0:
        return "a SLURM test cluster needs root (the daemons run as root and munged as user munge)"
    if missing_binaries() and shutil.which("apt-get") is None:
        return f"SLURM is not installed ({', '.join(missing_binaries())} missing) and there is no apt-get to install it"
    return None


def install() -> None:
    """Install Debian's munge and SLURM packages when any binary is missing; raise ClusterUnavailable on failure."""
    if not missing_binaries():
        return
    reason = unavailable_reason()
    if reason:
        raise ClusterUnavailable(reason)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *DEBIAN_PACKAGES],
    ):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            raise ClusterUnavailable(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): " + " | ".join(tail))
    if missing_binaries():
        raise ClusterUnavailable(f"installed {DEBIAN_PACKAGES} but still missing {missing_binaries()}")


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in {"Z", "X"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def total_memory_mb() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise ClusterUnavailable("cannot read MemTotal from /proc/meminfo")


class SlurmCluster:
    """One controller and ``nodes`` compute nodes, all on this host (one slurmd per node); everything (state, logs,
    sockets) lives under ``root``. Each node advertises this host's CPUs and memory and ``gpus`` fake GPUs.
    Only the daemons this object started are stopped, by the pids in their pid files.
    """

    def __init__(self, root: Path, nodes: int = 2, gpus: int = 2, min_job_age: int = 3600) -> None:
        self.root = Path(root).resolve()
        self.gpus = gpus
        self.min_job_age = min_job_age
        self.host = socket.gethostname().split(".")[0]
        self.node_names = [f"node{i}" for i in range(1, nodes + 1)]
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_dir = self.root / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.pid_files = {
            "munged": self.munge_dir / "munged.pid",
            "slurmctld": self.root / "run" / "slurmctld.pid",
            **{f"slurmd-{n}": self.root / "run" / f"slurmd-{n}.pid" for n in self.node_names},
        }
        self.log_files = {
            "munged": self.munge_dir / "munged.log",
            "slurmctld": self.root / "log" / "slurmctld.log",
            **{f"slurmd-{n}": self.root / "log" / f"slurmd-{n}.log" for n in self.node_names},
        }

    # -- environment for clients (sbatch, squeue, snakemake) --------------------------------------------------
    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        sbin = [d for d in SBIN_DIRS if d not in env.get("PATH", "").split(os.pathsep)]
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), *sbin]).strip(os.pathsep)
        return env

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
        return proc

    # -- configuration ----------------------------------------------------------------------------------------
    def _check_hostname(self) -> None:
        try:
            socket.gethostbyname(self.host)
        except OSError:
            # slurmd looks its own short name up; map it to loopback like a one-host cluster would.
            with open("/etc/hosts", "a") as fh:
                fh.write(f"\n127.0.0.1 {self.host}\n")

    def _make_fake_gpus(self) -> list[Path]:
        # GRES needs character devices; aliases of /dev/null (1,3) schedule like GPUs and hurt no one.
        devices = []
        for i in range(self.gpus):
            dev = self.root / "dev" / f"fakegpu{i}"
            if not dev.exists():
                try:
                    os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))
                except OSError as exc:
                    raise ClusterUnavailable(f"cannot create fake GPU device {dev} with mknod: {exc}") from exc
            devices.append(dev)
        return devices

    def write_config(self) -> None:
        for sub in ("etc", "state", "log", "run", "dev", *(f"spool/{n}" for n in self.node_names)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._check_hostname()
        self._make_fake_gpus()
        # Every node advertises the whole machine, as identical real nodes would; jobs may overcommit the host.
        cpus = os.cpu_count() or 1
        mem = int(total_memory_mb() * 0.9)
        node_lines = "\n".join(
            f"NodeName={name} NodeHostname={self.host} NodeAddr=127.0.0.1 Port={free_port()} "
            f"CPUs={cpus} RealMemory={mem} Gres=gpu:{self.gpus} State=UNKNOWN"
            for name in self.node_names
        )
        conf = f"""\
ClusterName=testcluster
SlurmctldHost={self.host}
SlurmctldPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={self.root / "state"}
SlurmdSpoolDir={self.root / "spool"}/%n
SlurmctldPidFile={self.pid_files["slurmctld"]}
SlurmdPidFile={self.root / "run"}/slurmd-%n.pid
SlurmctldLogFile={self.log_files["slurmctld"]}
SlurmdLogFile={self.root / "log"}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
MinJobAge={self.min_job_age}
ReturnToService=2
KillWait=30
GresTypes=gpu
{node_lines}
PartitionName=debug Nodes={",".join(self.node_names)} Default=YES MaxTime=INFINITE State=UP
"""
        self.conf.write_text(conf)
        (self.root / MARKER).write_text("a SLURM test cluster (tests/slurm/cluster.py)\n")
        gres = "AutoDetect=off\n" + f"Name=gpu File={self.root / 'dev'}/fakegpu[0-{self.gpus - 1}]\n"
        (self.root / "etc" / "gres.conf").write_text(gres)

    # -- daemons ----------------------------------------------------------------------------------------------
    def _pid(self, name: str) -> int | None:
        try:
            pid = int(self.pid_files[name].read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def _wait_for(self, what: str, check, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.5)
        raise RuntimeError(f"{what} did not come up within {timeout:.0f} s\n{self.logs_tail()}")

    def _start_munged(self) -> None:
        import pwd

        munge = pwd.getpwnam("munge")
        self.munge_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.munge_dir, 0o700)
        key = self.munge_dir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(128))
        os.chmod(key, 0o600)
        for path in [self.munge_dir, key]:
            os.chown(path, munge.pw_uid, munge.pw_gid)
        cmd = [
            which("munged"),
            f"--socket={self.munge_socket}",
            f"--key-file={key}",
            f"--pid-file={self.pid_files['munged']}",
            f"--log-file={self.log_files['munged']}",
            f"--seed-file={self.munge_dir / 'munged.seed'}",
            "--force",
        ]
        subprocess.run(cmd, check=True, user=munge.pw_uid, group=munge.pw_gid, extra_groups=[], timeout=30)
        self._wait_for("munged", lambda: self._pid("munged") is not None and self.munge_socket.exists())

    def _link_default_conf(self) -> None:
        if DEFAULT_CONF.is_symlink():
            target = Path(os.readlink(DEFAULT_CONF))
            dangling_tmp = not target.exists() and target.is_relative_to(tempfile.gettempdir())
            if dangling_tmp or not self._owner_alive(target):
                DEFAULT_CONF.unlink()  # left behind by a test cluster that is no longer running
        if DEFAULT_CONF.is_symlink() and DEFAULT_CONF.resolve() == self.conf:
            return
        if DEFAULT_CONF.exists() or DEFAULT_CONF.is_symlink():
            raise ClusterUnavailable(f"{DEFAULT_CONF} already exists (another SLURM cluster is configured here)")
        DEFAULT_CONF.parent.mkdir(parents=True, exist_ok=True)
        DEFAULT_CONF.symlink_to(self.conf)

    @staticmethod
    def _owner_alive(conf: Path) -> bool:
        """False only for the slurm.conf of a test cluster (marked by MARKER) whose slurmctld no longer runs."""
        root = conf.parent.parent
        if not (root / MARKER).is_file():
            return True  # not ours: never touched
        try:
            return alive(int((root / "run" / "slurmctld.pid").read_text().strip()))
        except (OSError, ValueError):
            return False

    def _unlink_default_conf(self) -> None:
        if DEFAULT_CONF.is_symlink() and Path(os.readlink(DEFAULT_CONF)) == self.conf:
            DEFAULT_CONF.unlink()

    def start(self) -> None:
        """Write the configuration and start munged, slurmctld, slurmd; return once the node accepts jobs."""
        install()
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # munged (user munge) must traverse it
        self.write_config()
        self._link_default_conf()
        try:
            self._start_munged()
            env = self.env()
            subprocess.run([which("slurmctld"), "-f", str(self.conf)], check=True, env=env, timeout=30)
            self._wait_for("slurmctld", lambda: self.run("sinfo", "-h", check=False).returncode == 0)
            for name in self.node_names:
                # One slurmd per node name on this host (Debian's SLURM is built with multiple-slurmd support).
                subprocess.run([which("slurmd"), "-f", str(self.conf), "-N", name], check=True, env=env, timeout=30)
            self._wait_for("slurmd", self._nodes_ready, timeout=60)
        except BaseException:
            self.stop()
            raise
        (self.root / "cluster.json").write_text(json.dumps({"SLURM_CONF": str(self.conf), "host": self.host}))

    def _nodes_ready(self) -> bool:
        proc = self.run("sinfo", "-h", "-N", "-o", "%t", check=False)
        states = proc.stdout.split()
        return proc.returncode == 0 and len(states) == len(self.node_names) and set(states) <= {"idle", "mix", "alloc"}

    def stop(self) -> None:
        """Stop the daemons this cluster started (slurmds, slurmctld, munged), each by its pid file."""
        # Every slurmd that wrote a pid file here, whatever node count this object was made with.
        for pid_file in sorted((self.root / "run").glob("slurmd-*.pid")):
            self.pid_files.setdefault(pid_file.stem, pid_file)
        for name in [*(n for n in self.pid_files if n.startswith("slurmd-")), "slurmctld", "munged"]:
            pid = self._pid(name)
            if pid is None:
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self._pid(name) == pid:
                time.sleep(0.2)
            if self._pid(name) == pid:
                os.kill(pid, signal.SIGKILL)
        self._unlink_default_conf()

    def logs_tail(self, lines: int = 20) -> str:
        parts = []
        for name, path in self.log_files.items():
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {name} log ({path}) ---\n" + "\n".join(text))
        return "\n".join(parts)

    # -- records ----------------------------------------------------------------------------------------------
    def jobs(self, workdir: Path | None = None) -> list[dict[str, str]]:
        """Jobs slurmctld still remembers (MinJobAge keeps finished ones) as `scontrol show job -o` fields, only those
        submitted from ``workdir`` when given; ``rule`` is added from the comment the Snakemake plugin sets."""
        proc = self.run("scontrol", "show", "job", "-o", "--details")
        records = []
        for line in proc.stdout.splitlines():
            if not line.strip() or line.startswith("No jobs"):
                continue
            job = parse_scontrol_line(line)
            if workdir is not None and Path(job.get("WorkDir", "")).resolve() != Path(workdir).resolve():
                continue
            comment = job.get("Comment", "")
            if comment.startswith("rule_"):
                job["rule"] = comment[len("rule_") :].split("_wildcards_")[0]
            records.append(job)
        return records


def requested_gpus(job: dict[str, str]) -> int:
    """GPUs SLURM recorded for a job: `--gpus=N` shows as TresPerJob=gres:gpu:N; 0 when none were asked for."""
    total = 0
    for field in ("TresPerJob", "TresPerNode", "TresPerTask"):
        for item in job.get(field, "").split(","):
            parts = item.replace("gres/", "gres:").split(":")
            if len(parts) >= 3 and parts[0] == "gres" and parts[1] == "gpu":
                total += int(parts[-1])
            elif len(parts) == 2 and parts[0] == "gres" and parts[1] == "gpu":
                total += 1
    return total


def parse_scontrol_line(line: str) -> dict[str, str]:
    """Split one `scontrol -o` line into key=value fields (values never contain spaces except in Command)."""
    fields: dict[str, str] = {}
    key = None
    for token in line.split(" "):
        if "=" in token and not token.startswith("="):
            key, _, value = token.partition("=")
            fields[key] = value
        elif key is not None and token:
            fields[key] += " " + token
    return fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="print why this machine cannot host the cluster (exit 1), or 'ok'")
    sub.add_parser("install", help="install munge and SLURM from Debian when missing")
    start = sub.add_parser("start", help="start a cluster; prints the SLURM_CONF export line")
    start.add_argument("--dir", type=Path, default=None, help="cluster folder (default: a new temporary one)")
    start.add_argument("--nodes", type=int, default=2, help="compute nodes (slurmd daemons on this host)")
    start.add_argument("--gpus", type=int, default=2, help="fake GPUs per node")
    stop = sub.add_parser("stop", help="stop the daemons a `start` in this folder started")
    stop.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "check":
        reason = unavailable_reason()
        print(reason or "ok")
        return 1 if reason else 0
    try:
        if args.command == "install":
            install()
        elif args.command == "start":
            root = args.dir or Path(tempfile.mkdtemp(prefix="slurm-cluster-"))
            cluster = SlurmCluster(root, nodes=args.nodes, gpus=args.gpus)
            cluster.start()
            print(f"export SLURM_CONF={cluster.conf}")
        elif args.command == "stop":
            SlurmCluster(args.dir).stop()
    except ClusterUnavailable as exc:
        print(f"cannot host a SLURM test cluster: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
