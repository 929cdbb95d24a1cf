"""A real one-node SLURM cluster on this machine, for the tests of script/*.sbatch.

``SlurmCluster(root).start()`` writes a minimal ``slurm.conf`` and a munge key into
``root``, starts ``munged``, ``slurmctld`` and ``slurmd`` in the foreground as child
processes (all their sockets, state, spool and log files inside ``root``, the SLURM
ports on free loopback ports, so several clusters can run side by side), and waits
until ``sinfo`` shows the node idle. ``stop()`` ends exactly the daemons it started,
by process id (SIGTERM, then SIGKILL), plus any job processes they left behind.

The daemons run as the current user, which must be root (slurmd starts job steps as
the submitting user). ``unavailable()`` says why a cluster cannot be started here,
or returns None.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "sbatch", "squeue", "scancel", "scontrol", "srun")


def _which(name):
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")


def unavailable():
    """Why a SLURM cluster cannot be started here (a sentence), or None."""
    missing = [n for n in DAEMONS + CLIENTS if not _which(n)]
    if missing:
        return ("SLURM/munge not installed (missing " + ", ".join(missing) + "); "
                "install them with 'apt-get install -y slurm-wlm munge'")
    if os.geteuid() != 0:
        return "a test SLURM cluster needs root (slurmd starts jobs as the submitting user)"
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _pids_with_env(var, value):
    """Every live process (other than this one) whose environment has var=value."""
    want = f"{var}={value}".encode()
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if want in f.read().split(b"\0"):
                        found.append(int(d))
            except OSError:
                pass
    return found


class SlurmCluster:
    """A one-node cluster (node = this host, ``cpus`` CPUs, partition ``debug``)."""

    def __init__(self, root, cpus=2, kill_wait=30, cred_expire=5):
        self.root = os.path.abspath(root)
        self.cpus = cpus
        self.kill_wait = kill_wait        # seconds between SIGTERM and SIGKILL of a cancelled job
        self.cred_expire = cred_expire    # also the delay before a requeued job may start again
        self.node = socket.gethostname().split(".")[0]
        self.conf = os.path.join(self.root, "slurm.conf")
        self.munge_socket = os.path.join(self.root, "munge", "munge.socket")
        self.procs = {}

    # -- environment -------------------------------------------------------------
    @property
    def env(self):
        """Environment for SLURM clients and jobs: this cluster's conf, this Python first."""
        e = dict(os.environ)
        e["SLURM_CONF"] = self.conf
        bindir = os.path.dirname(sys.executable)
        e["PATH"] = os.pathsep.join([bindir, e.get("PATH", ""), "/usr/sbin", "/usr/bin"])
        e["PYTHON"] = sys.executable
        e.setdefault("OMP_NUM_THREADS", "1")
        e["PYTHONUNBUFFERED"] = "1"
        for k in list(e):      # a job started from inside another allocation must not inherit it
            if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k != "SLURM_CONF":
                del e[k]
        return e

    def cmd(self, *args, check=True, timeout=60, env=None, cwd=None):
        """Run a SLURM client (or any command) against this cluster; ``env`` adds variables."""
        e = self.env
        e.update(env or {})
        p = subprocess.run([str(a) for a in args], env=e, cwd=cwd, capture_output=True,
                           text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, args))} failed ({p.returncode}):\n"
                               f"{p.stdout}{p.stderr}\n{self.logs()}")
        return p

    # -- start / stop ------------------------------------------------------------
    def write_config(self):
        for d in ("munge", "state", "spool", "log"):
            os.makedirs(os.path.join(self.root, d), mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)
        key = os.path.join(self.root, "munge", "munge.key")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(os.urandom(1024))
        user = _user()
        mem = _mem_mb()
        r = self.root
        with open(self.conf, "w") as f:
            f.write(f"""\
# one-node test cluster written by tests/slurm_cluster.py
ClusterName=llt{os.getpid()}
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire={self.cred_expire}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmdParameters=config_overrides
ReturnToService=2
KillWait={self.kill_wait}
MinJobAge=600
InactiveLimit=0
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")

    def start(self, timeout=60):
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        self.write_config()
        r = self.root
        self._spawn("munged", [_which("munged"), "--foreground", "--force",
                               f"--socket={self.munge_socket}",
                               f"--key-file={r}/munge/munge.key",
                               f"--pid-file={r}/munge/munged.pid",
                               f"--seed-file={r}/munge/munged.seed",
                               f"--log-file={r}/log/munged.log"])
        self._wait(lambda: os.path.exists(self.munge_socket), 15, "munged socket")
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", self.conf])
        self._spawn("slurmd", [_which("slurmd"), "-D", "-f", self.conf, "-N", self.node])
        self._wait(self._node_idle, timeout, f"node {self.node} idle in sinfo")
        return self

    def _spawn(self, name, argv):
        out = open(os.path.join(self.root, "log", f"{name}.out"), "w")
        self.procs[name] = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        out.close()

    def _node_idle(self):
        p = self.cmd("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=20)
        return p.returncode == 0 and p.stdout.strip() == "idle"

    def _wait(self, ready, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited at start-up\n{self.logs()}")
            if ready():
                return
            time.sleep(0.3)
        raise RuntimeError(f"timed out after {timeout}s waiting for {what}\n{self.logs()}")

    def stop(self):
        """Stop the daemons this object started, by pid, and any job processes they left."""
        procs = [self.procs[n] for n in ("slurmd", "slurmctld", "munged") if n in self.procs]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        # slurmstepd and job tasks are not children of slurmd (it double-forks them);
        # they are recognised by this cluster's own SLURM_CONF in their environment
        for pid in _pids_with_env("SLURM_CONF", self.conf):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs.clear()

    def logs(self, lines=30):
        """The tail of every daemon log, for failure messages."""
        out = []
        for name in sorted(os.listdir(os.path.join(self.root, "log"))):
            with open(os.path.join(self.root, "log", name), errors="replace") as f:
                tail = f.readlines()[-lines:]
            out.append(f"--- {name}\n" + "".join(tail))
        return "\n".join(out)

    # -- jobs ----------------------------------------------------------------------
    def sbatch(self, script, *args, env=None, cwd=None):
        """Submit ``script`` (``sbatch --parsable args script``); returns the job id."""
        p = self.cmd("sbatch", "--parsable", *args, script, env=env, cwd=cwd)
        return p.stdout.strip().split(";")[0]

    def job(self, jobid):
        """``scontrol show job`` as a dict (JobState, ExitCode, ...)."""
        p = self.cmd("scontrol", "-o", "show", "job", jobid)
        fields = {}
        for tok in p.stdout.split():
            k, _, v = tok.partition("=")
            fields.setdefault(k, v)
        return fields

    def wait_job(self, jobid, timeout=300):
        """Wait until the job has ended; returns its final scontrol fields."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            j = self.job(jobid)
            if j["JobState"] not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING",
                                     "REQUEUED", "RESIZING", "SUSPENDED"):
                return j
            time.sleep(0.5)
        raise RuntimeError(f"job {jobid} still {j['JobState']} after {timeout}s\n{self.logs()}")


def _user():
    import pwd
    return pwd.getpwuid(os.geteuid()).pw_name


def _mem_mb():
    with open("/proc/meminfo") as f:
        kb = int(next(l for l in f if l.startswith("MemTotal")).split()[1])
    return max(1, kb // 1024 - 512)
