"""Shared plumbing for the benchmarks: processes that are always stopped, free loopback ports,
the three receivers (DCMTK storescp, Orthanc 1.10 with SQLite, `ihe archive serve`), DCMTK
storescu senders, memory readings from /proc and small statistics helpers.

Every process is started in its own session and tracked by a `Procs` object; leaving its
`with` block (normally, on an exception, on Ctrl-C or on SIGTERM) stops each one by process
group id, so forked children (storescp --fork) go too.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEER_ORTHANC_JSON = BENCH / "orthanc.json"

# pynetdicom installs Python scripts named storescu, storescp, ... that come first in PATH;
# the benchmarks want DCMTK's own programs.
DCMTK_BIN = Path("/usr/bin")
# Without TCP_NODELAY, DCMTK leaves Nagle on and each C-STORE waits ~40 ms for a delayed ACK.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
LOOPBACK = "127.0.0.1"


def dcmtk(tool: str) -> str:
    p = DCMTK_BIN / tool
    if not p.exists():
        sys.exit(f"DCMTK's {tool} is missing at {p}: apt-get install dcmtk")
    return str(p)


def ihe_command() -> list[str]:
    """The `ihe` console script of this interpreter's environment (falls back to -m ihecli)."""
    script = Path(sys.executable).parent / "ihe"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "ihecli"]


def add_common(p) -> None:
    """Options every benchmark takes."""
    p.add_argument("--ihe-workers", type=int, metavar="N",
                   help="pass --workers N to `ihe archive serve` (default: ihe's own default)")
    p.add_argument("--json", type=Path, help="also write the results to this file")
    p.add_argument("--workdir", help="where temporary folders go (default: the system's)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    p.add_argument("--no-netns", action="store_true", help="do not run in a private network namespace")


def setup(script: str, a, argv) -> None:
    """Apply the common options: private network namespace, SIGTERM handling, ihe options."""
    isolate_network([str(Path(script).resolve()), *(argv if argv is not None else sys.argv[1:])], not a.no_netns)
    stop_on_sigterm()
    VERSION[0] = ihe_version()  # the source as it was when the run started
    if a.ihe_workers:
        IHE_EXTRA[:] = ["--workers", str(a.ihe_workers)]


def header(what: str) -> str:
    w = f"`--workers {IHE_EXTRA[1]}`" if IHE_EXTRA else "default workers"
    return f"machine: {machine()}; ihe {VERSION[0] or ihe_version()} ({w}); {what}"


# -- isolation --------------------------------------------------------------------------------
def isolate_network(argv: list[str], enabled: bool) -> None:
    """Re-run this script in a private network namespace that holds only loopback.

    DCMTK storescp 3.6.7 and Orthanc 1.10 have no option to listen on one address only; in
    a private namespace whatever they bind is reachable from this machine's loopback alone,
    and nothing clashes with ports other programs use. Needs root and util-linux `unshare`;
    otherwise (or with --no-netns) the benchmark runs in the normal namespace.
    """
    if not enabled or os.environ.get("IHE_BENCH_NETNS") == "1":
        if os.environ.get("IHE_BENCH_NETNS") == "1":
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if os.geteuid() != 0 or not unshare or not ip:
        note("no private network namespace (needs root, unshare and ip): peers listen on all addresses")
        return
    probe = subprocess.run([unshare, "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        note("unshare -n refused here: peers listen on all addresses")
        return
    os.environ["IHE_BENCH_NETNS"] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(unshare, [unshare, "-n", "--", sys.executable, *argv])


def note(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every `finally` runs and children are stopped."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)


# -- processes --------------------------------------------------------------------------------
class Procs:
    """Processes to stop on exit, each by its own process group id."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd, *, log: Path | None = None, env=None, **kw) -> subprocess.Popen:
        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            p = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT if log else out,
                                 stdin=subprocess.DEVNULL, env=env, start_new_session=True, **kw)
        finally:
            if log:
                out.close()
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 15) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # forked children (storescp --fork) share the group; take them down as well
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if p.poll() is None:
            p.wait(5)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.procs)):
            self.stop(p)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_all()


class Workdir:
    """A temporary folder removed on exit (unless --keep)."""

    def __init__(self, base: str | None = None, keep: bool = False, prefix: str = "ihe-bench-"):
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        self.keep = keep

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc):
        if self.keep:
            note(f"kept {self.path}")
        else:
            shutil.rmtree(self.path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 120, log: Path | None = None,
              interval: float = 0.005) -> float:
    """Wait until something accepts on 127.0.0.1:port; returns the monotonic time it did."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex((LOOPBACK, port)) == 0:
                return time.monotonic()
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before listening on {port}" + tail(log))
        time.sleep(interval)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s" + tail(log))


def tail(log: Path | None, n: int = 20) -> str:
    if not log or not Path(log).exists():
        return ""
    lines = Path(log).read_text(errors="replace").splitlines()[-n:]
    return "\n  " + "\n  ".join(lines)


# -- receivers --------------------------------------------------------------------------------
class Server:
    def __init__(self, name: str, aet: str, port: int, proc: subprocess.Popen, log: Path | None,
                 startup: float, root: Path):
        self.name, self.aet, self.port, self.proc, self.log = name, aet, port, proc, log
        self.startup = startup  # seconds from launch to accepting connections
        self.root = root  # where it keeps what it receives

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_storescp(procs: Procs, out: Path, *, fork: bool = False, aet: str = "STORESCP",
                   port: int | None = None) -> Server:
    out.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cmd = [dcmtk("storescp"), "-aet", aet, "-od", out, "+uf"]
    if fork:
        cmd.append("--fork")
    cmd.append(str(port))
    t0 = time.monotonic()
    p = procs.start(cmd, env=DCMTK_ENV)
    t1 = wait_port(port, p)
    return Server("dcmtk-storescp" + (" --fork" if fork else ""), aet, port, p, None, t1 - t0, out)


def orthanc_config(work: Path, storage: Path, *, dicom_port: int, http_port: int,
                   modalities: dict | None = None) -> Path:
    """The peers' orthanc.json with its storage in `storage`, free ports and extra modalities."""
    text = "\n".join(x for x in PEER_ORTHANC_JSON.read_text().splitlines() if not x.lstrip().startswith("//"))
    c = json.loads(text)
    c["StorageDirectory"] = c["IndexDirectory"] = str(storage)
    c["DicomPort"], c["HttpPort"] = dicom_port, http_port
    c["DicomModalities"] = {**c.get("DicomModalities", {}), **(modalities or {})}
    path = work / f"orthanc-{dicom_port}.json"
    path.write_text(json.dumps(c, indent=2))
    return path


def start_orthanc(procs: Procs, work: Path, storage: Path, *, modalities: dict | None = None,
                  verbose: bool = False) -> Server:
    storage.mkdir(parents=True, exist_ok=True)
    port, http = free_port(), free_port()
    cfg = orthanc_config(work, storage, dicom_port=port, http_port=http, modalities=modalities)
    log = work / f"orthanc-{port}.log"
    cmd = [shutil.which("Orthanc") or "/usr/sbin/Orthanc", cfg]
    if verbose:
        cmd.append("--verbose")
    t0 = time.monotonic()
    p = procs.start(cmd, log=log, env=DCMTK_ENV)
    t1 = wait_port(port, p, log=log)
    wait_port(http, p, log=log)
    s = Server("orthanc-1.10-sqlite", "ORTHANC", port, p, log, t1 - t0, storage)
    s.http_port = http
    return s


def orthanc_count(server: Server) -> int:
    """Instances in Orthanc's index (REST /statistics)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{LOOPBACK}:{server.http_port}/statistics", timeout=30) as r:
        return int(json.load(r)["CountInstances"])


VERSION = [""]
IHE_EXTRA: list[str] = []  # options added to every `ihe archive serve` (e.g. --workers N)


def start_ihe(procs: Procs, work: Path, db: Path, storage: Path, *, dests: list[str] = (),
              aet: str = "IHE_ARCHIVE", extra: list[str] = ()) -> Server:
    """`ihe archive serve` on a free loopback port, with its own (empty) profile.

    `startup` is the time from launch until the port accepts a connection."""
    port = free_port()
    log = work / f"ihe-{port}.log"
    env = {**os.environ, "IHE_CONFIG": str(work / "ihe-config.toml"), "IHE_DATA_DIR": str(work / "ihe-data")}
    env.pop("IHE_PROFILE", None)
    cmd = [*ihe_command(), "archive", "serve", "--port", str(port), "--bind", LOOPBACK, "--aet", aet,
           "--db", f"sqlite:///{db.resolve()}", "--storage", storage.resolve()]
    for d in dests:
        cmd += ["--dest", d]
    cmd += [*IHE_EXTRA, *extra]
    t0 = time.monotonic()
    p = procs.start(cmd, log=log, env=env)
    t1 = wait_port(port, p, log=log)
    return Server("ihe archive serve", aet, port, p, log, t1 - t0, storage)


def ihe_count(db: Path) -> int:
    """Instances in the ihe index (read-only SQLite query)."""
    import sqlite3

    con = sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute("SELECT count(*) FROM instances").fetchone()[0]
    finally:
        con.close()


def count_files(root: Path) -> int:
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        n += sum(1 for f in filenames if not f.startswith("."))
    return n


# -- senders ----------------------------------------------------------------------------------
def split_corpus(corpus: Path, out: Path, parts: int = 4) -> list[Path]:
    """Symlink the corpus round-robin into `parts` folders (as the peers' parallel_bench.sh)."""
    files = sorted(f for f in os.listdir(corpus) if not f.startswith("."))
    dirs = [out / str(i) for i in range(parts)]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        os.symlink(corpus.resolve() / f, dirs[i % parts] / f)
    return dirs


def storescu(procs: Procs, folders: list[Path], port: int, aec: str, aet: str = "SCU",
             log_dir: Path | None = None) -> float:
    """DCMTK storescu, one association per folder, all at once; returns wall seconds.

    -nh (no halt): a refused image does not end the association; callers count what the
    receiver holds afterwards."""
    t0 = time.perf_counter()
    running = []
    for i, d in enumerate(folders):
        log = (log_dir / f"storescu-{port}-{i}.log") if log_dir else None
        if log and log.exists():
            log.unlink()
        cmd = [dcmtk("storescu"), "-aet", aet, "-aec", aec, "-nh", "+sd", LOOPBACK, str(port), d]
        running.append((procs.start(cmd, env=DCMTK_ENV, log=log), log))
    failed = []
    for p, log in running:
        rc = p.wait()
        procs.procs.remove(p)
        if rc != 0:
            failed.append(f"storescu exited {rc}" + tail(log))
    dt = time.perf_counter() - t0
    if failed:
        raise RuntimeError("; ".join(failed))
    return dt


def load(procs: Procs, srv: Server, folders: list[Path], expected: int, count, log_dir: Path | None = None) -> dict:
    """Send a corpus with storescu (one association per folder) and check the receiver holds it all.

    Images refused on the first pass are sent again by a second pass (the receiver keeps what it
    already holds); the result says how many that took. Raises if images are still missing."""
    dt = storescu(procs, folders, srv.port, srv.aet, log_dir=log_dir)
    got = count()
    out = {"seconds": dt, "rate": expected / dt, "missing_first_pass": expected - got}
    if got != expected:
        note(f"{srv.name}: {expected - got} of {expected} images refused on the first pass; sending again"
             + tail(srv.log, 5))
        storescu(procs, folders, srv.port, srv.aet, log_dir=log_dir)
        got = count()
        if got != expected:
            raise SystemExit(f"{srv.name}: holds {got} of {expected} images after a second pass" + tail(srv.log))
    return out


# -- memory -----------------------------------------------------------------------------------
def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (Linux /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def tree_memory(pid: int) -> dict[str, int]:
    """Memory of a process and its descendants, in KiB: sums of VmRSS, VmHWM (each process's
    peak; their sum bounds the peak of the whole) and Pss (shared pages counted once)."""
    tot = {"VmRSS": 0, "VmHWM": 0, "Pss": 0, "processes": 0}
    for p in process_tree(pid):
        try:
            st = proc_status(p)
            with open(f"/proc/{p}/smaps_rollup") as f:
                pss = next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
        except (OSError, ValueError):
            continue
        tot["VmRSS"] += st.get("VmRSS", 0)
        tot["VmHWM"] += st.get("VmHWM", 0)
        tot["Pss"] += pss
        tot["processes"] += 1
    return tot


def ihe_version() -> str:
    """The commit of the ihe source measured, and whether its working tree differs."""
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "ihecli"],
                               capture_output=True, text=True).stdout.strip()
        return sha + (" + uncommitted changes in ihecli/" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def mib(kib: float) -> str:
    return f"{kib / 1024:.0f} MiB"


# -- statistics and tables --------------------------------------------------------------------
def median(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


def p95(xs) -> float:
    """Nearest-rank 95th percentile."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = max(0, -(-95 * len(s) // 100) - 1)
    return s[k]


def table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A GitHub-style Markdown table."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    align = align or "l" + "r" * (len(headers) - 1)

    def line(vals):
        return "| " + " | ".join(v.ljust(w) if a == "l" else v.rjust(w)
                                 for v, w, a in zip(vals, widths, align)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2)) for w, a in zip(widths, align)) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def run_py(script: str, *args) -> None:
    """Run one of the bench scripts with this interpreter."""
    subprocess.run([sys.executable, str(BENCH / script), *(str(x) for x in args)], check=True,
                   stdout=subprocess.DEVNULL)


def gen_corpus(out: Path, *args) -> None:
    run_py("gen_corpus.py", out, *args)


def machine() -> str:
    import platform

    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return (f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")
