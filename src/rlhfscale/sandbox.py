"""Run untrusted generated Python code: one sandboxed process per program, bounded and cleaned up.

``run(code, stdin="", timeout_s=2.0, memory_mb=256)`` returns a `SandboxResult` (``ok``,
``stdout``, ``stderr``, ``returncode``, ``reason``); ``run_many(programs, max_workers=...)`` runs
many through a bounded thread pool, one subprocess each. `reason` is one of

- ``ok``: exit status 0;  ``error``: non-zero exit status (an uncaught exception, a syntax error);
- ``timeout``: past the wall-clock limit, or the CPU limit (SIGXCPU);
- ``memory``: a MemoryError under the address-space limit;
- ``killed``: ended by a signal (SIGSEGV, or the runner itself was killed);
- ``output_limit``: stdout + stderr over `max_output_bytes` (the program was killed there);
- ``sandbox_error``: the sandbox itself failed (its message is in `stderr`).

How a program is contained (``rlhfscale/_sandbox_child.py`` is the runner, started with
``python -I -S`` in a new session, an empty environment (``PATH=/usr/bin:/bin`` only) and an empty
temporary working directory deleted afterwards):

- **resource limits** in the program process: RLIMIT_CPU, RLIMIT_AS (`memory_mb`), RLIMIT_NPROC
  (`max_procs`), RLIMIT_FSIZE, RLIMIT_NOFILE (64), RLIMIT_CORE (0); stdout and stderr are capped;
- **as root** (this project's CI and GPU machines): the program runs as a user id of its own,
  taken from a pool of otherwise unused ids (``UID_BASE`` up, one per concurrent program, claimed
  with a lock file), because Linux does not apply RLIMIT_NPROC to root: a fork bomb stops at
  `max_procs`. The runner stays root, so the program cannot signal it or anything else of ours.
  It also enters new **network** (no interface but a down loopback: every connection fails),
  **mount** (every mount read-only, a private size-limited tmpfs on /tmp as the working directory,
  a fresh /proc, /root hidden except the standard library) and **PID** namespaces;
- **not root**: the same namespaces inside a user namespace when the kernel allows unprivileged
  ones; otherwise (no network namespace) an audit hook installed before the code runs refuses
  sockets, ctypes and starting programs. Audit hooks are not a security boundary (PEP 578): that
  fallback keeps honest mistakes and casual attempts off the network, not a determined attacker;
  without a mount namespace only file permissions and RLIMIT_FSIZE guard the file system, and
  without a PID namespace the program, running as the caller's user, could signal the caller.
- **descendants**: the program is the child of PID 1 of its PID namespace; when it exits or the
  deadline passes, PID 1 dies and the kernel kills every process left in the namespace (double
  forks and ``setsid`` included). Also, with an own user id, every process of that id is killed
  (``kill(-1)`` as that user); and the runner is a child subreaper that kills whatever is
  re-parented to it. If the runner itself dies, the caller kills its process group and the id.

`isolation()` reports what this machine allows (it runs one trivial program). Linux only.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

RUNNER = Path(__file__).with_name("_sandbox_child.py")
UID_BASE_HIGH, UID_BASE_LOW, UID_SLOTS = 2_000_000, 40_000, 1024
GRACE_S = 20.0  # the runner enforces the timeout; the caller's own deadline is a backstop
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
SETUP_FAILED = 126
USE_NAMESPACES = True  # False forces the no-namespace fallback (tests use it to exercise that path)


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one program: `ok` is ``reason == "ok"``; `returncode` is -signal when killed."""

    ok: bool
    stdout: str
    stderr: str
    returncode: int | None
    reason: str
    wall_s: float = 0.0
    isolation: dict = field(default_factory=dict, compare=False, hash=False)


def run(code: str, stdin: str = "", timeout_s: float = 2.0, memory_mb: int = 256, *,
        max_output_bytes: int = 1 << 20, max_procs: int = 32, disk_mb: int = 32) -> SandboxResult:
    """Run `code` (a Python program) with `stdin`, in the sandbox described in the module docstring."""
    start = time.monotonic()
    with _uid_slot() as uid, _scratch(uid) as (control, workdir):
        (control / "code.py").write_text(code, encoding="utf-8")
        (control / "stdin").write_text(stdin, encoding="utf-8")
        status_r, status_w = os.pipe()
        cfg = {"code_path": str(control / "code.py"), "timeout_s": timeout_s, "memory_mb": memory_mb,
               "disk_mb": disk_mb, "max_procs": max_procs, "uid": uid, "status_fd": status_w,
               "workdir": str(workdir), "namespaces": USE_NAMESPACES}
        try:
            try:
                with open(control / "stdin", "rb") as stdin_file:
                    proc = subprocess.Popen(
                        [sys.executable, "-I", "-S", "-B", str(RUNNER), json.dumps(cfg)], stdin=stdin_file,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(status_w,), cwd=workdir,
                        env=ENV, start_new_session=True)
            finally:
                os.close(status_w)
            out, err, status, overflow = _communicate(proc, status_r, timeout_s + GRACE_S, max_output_bytes, uid)
        finally:
            os.close(status_r)
    return _result(out, err, status, overflow, time.monotonic() - start)


def run_many(programs: Sequence[str | tuple[str, str]], max_workers: int | None = None,
             **limits) -> list[SandboxResult]:
    """Run each program (code, or (code, stdin)) with `run`, at most `max_workers` at a time, in order.

    `limits` are `run`'s keyword arguments (timeout_s, memory_mb, max_output_bytes, ...).
    """
    jobs = [(p, "") if isinstance(p, str) else p for p in programs]
    workers = max_workers or min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda job: run(job[0], job[1], **limits), jobs))


@cache
def isolation() -> dict:
    """What containment this machine allows: ``{"net", "mount", "pid", "user", "uid", ...}``."""
    return dict(run("pass", timeout_s=10).isolation)


# ---- the caller's side of one run -------------------------------------------------------------
def _communicate(proc: subprocess.Popen, status_r: int, limit_s: float, cap: int,
                 uid: int | None) -> tuple[bytes, bytes, bytes, bool]:
    """(stdout, stderr, status line, output over `cap`), reading all three pipes until they close.

    Past `limit_s`, over `cap`, or when the runner died without closing the pipes, the runner's
    process group and every process of `uid` are killed.
    """
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    chunks = {out_fd: [], err_fd: [], status_r: []}
    sel = selectors.DefaultSelector()
    for fd in chunks:
        sel.register(fd, selectors.EVENT_READ)
    deadline, size, overflow = time.monotonic() + limit_s, 0, False
    exited_at = killed_at = None
    while sel.get_map():
        for key, _ in sel.select(timeout=0.1):
            data = os.read(key.fd, 65536)
            if not data:
                sel.unregister(key.fd)
                continue
            if key.fd != status_r:
                size += len(data)
                overflow = overflow or size > cap
            if size <= cap or key.fd == status_r:
                chunks[key.fd].append(data)
        now = time.monotonic()
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        stuck = exited_at is not None and now - exited_at > 1.0
        if killed_at is None and (overflow or now > deadline or stuck):
            _kill_all(proc, uid)
            killed_at = now
        elif killed_at is not None and now - killed_at > 5.0:
            break  # something we cannot kill holds a pipe: give up reading it
    sel.close()
    proc.stdout.close()
    proc.stderr.close()
    proc.wait()
    if killed_at is not None:
        _kill_all(proc, uid)
    out, err = b"".join(chunks[out_fd]), b"".join(chunks[err_fd])
    return out[:cap], err[:max(0, cap - len(out))], b"".join(chunks[status_r]), overflow


def _kill_all(proc: subprocess.Popen, uid: int | None) -> None:
    """Kill the runner's process group and, when the program had its own user id, all of that id."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None and (kill := shutil.which("kill", path=ENV["PATH"])):
        subprocess.run([kill, "-9", "-1"], user=uid, group=uid, extra_groups=[], env=ENV,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=10)


def _result(out: bytes, err: bytes, status_line: bytes, overflow: bool, wall_s: float) -> SandboxResult:
    stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    try:
        status = json.loads(status_line)
    except ValueError:
        status = None
    if overflow:
        return SandboxResult(False, stdout, stderr, None, "output_limit", wall_s)
    if status is None:
        return SandboxResult(False, stdout, stderr, None, "killed", wall_s)
    isolation = status.get("isolation", {})
    if status["error"]:
        return SandboxResult(False, stdout, stderr + f"\nsandbox: {status['error']}", None, "sandbox_error",
                             wall_s, isolation)
    raw = status["status"]
    if status["timeout"] or raw is None:
        return SandboxResult(False, stdout, stderr, -signal.SIGKILL, "timeout", wall_s, isolation)
    if os.WIFSIGNALED(raw):
        sig = os.WTERMSIG(raw)
        reason = "timeout" if sig == signal.SIGXCPU else "killed"
        return SandboxResult(False, stdout, stderr, -sig, reason, wall_s, isolation)
    code = os.WEXITSTATUS(raw)
    if code == 0:
        return SandboxResult(True, stdout, stderr, 0, "ok", wall_s, isolation)
    if code == SETUP_FAILED and "sandbox setup failed" in stderr:
        return SandboxResult(False, stdout, stderr, code, "sandbox_error", wall_s, isolation)
    reason = "memory" if "MemoryError" in stderr.strip().rsplit("\n", 1)[-1] else "error"
    return SandboxResult(False, stdout, stderr, code, reason, wall_s, isolation)


# ---- user ids and scratch directories -----------------------------------------------------------
_claimed: set[int] = set()
_claim_lock = threading.Lock()


@contextmanager
def _uid_slot() -> Iterator[int | None]:
    """An unused user id for one program (None when not root), held with a lock file meanwhile."""
    base = _uid_base()
    if base is None:
        yield None
        return
    lock_dir = Path(tempfile.gettempdir()) / "rlhfscale-sandbox-uids"
    lock_dir.mkdir(mode=0o700, exist_ok=True)
    for uid in range(base, base + UID_SLOTS):
        with _claim_lock:
            if uid in _claimed:
                continue
            _claimed.add(uid)
        fd = os.open(lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            with _claim_lock:
                _claimed.discard(uid)
            continue
        try:
            yield uid
        finally:
            os.close(fd)
            with _claim_lock:
                _claimed.discard(uid)
        return
    raise RuntimeError(f"sandbox: all {UID_SLOTS} user ids from {base} are in use")


@cache
def _uid_base() -> int | None:
    """The first of UID_SLOTS ids no account uses and this user namespace maps; None if not root."""
    if os.geteuid() != 0:
        return None
    try:
        ranges = [tuple(map(int, line.split())) for line in Path("/proc/self/uid_map").read_text().splitlines()]
    except OSError:
        ranges = [(0, 0, 2**32 - 1)]
    for base in (UID_BASE_HIGH, UID_BASE_LOW):
        mapped = any(inner <= base and base + UID_SLOTS <= inner + count for inner, _, count in ranges)
        if mapped and not any(base <= p.pw_uid < base + UID_SLOTS for p in pwd.getpwall()):
            return base
    return None


@contextmanager
def _scratch(uid: int | None) -> Iterator[tuple[Path, Path]]:
    """(control dir for the code and stdin, readable by us only; empty working dir), removed after."""
    control = Path(tempfile.mkdtemp(prefix="rlhfscale-sandbox-ctl-"))
    workdir = Path(tempfile.mkdtemp(prefix="rlhfscale-sandbox-"))
    try:
        if uid is not None:
            os.chown(workdir, uid, uid)
        yield control, workdir
    finally:
        shutil.rmtree(control, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
