"""The sandbox's runner: the process `rlhfscale.sandbox` starts, run as a script under ``python -I -S``.

It imports only the standard library (it runs without site-packages) and never writes to its
stdout or stderr, which belong to the program. Argument 1 is a JSON object:
``{"code_path", "timeout_s", "memory_mb", "disk_mb", "max_procs", "uid", "status_fd", "workdir",
"namespaces"}``.
Steps, each best-effort and reported in ``isolation``:

1. become a child subreaper, so orphaned descendants are re-parented to the runner;
2. enter new network, mount and PID namespaces (as root; else try a user namespace too);
3. in the mount namespace: every mount read-only (``mount_setattr``), a size-limited tmpfs on
   /tmp as the working directory, a fresh /proc, and a directory the sandbox user cannot enter
   (/root holding the interpreter) replaced by an empty one with only the standard library bound in;
4. fork: PID 1 of the new namespace forks the program process, which sets the resource limits,
   drops to `uid` (when given) and every capability (also those a user namespace gave us), sets
   no-new-privileges, closes every other descriptor and executes the code;
5. on the wall-clock deadline kill PID 1 (the kernel then kills the whole namespace), then kill
   every process of `uid` (``kill(-1)`` as that user) and every remaining child;
6. write one JSON status line to `status_fd`:
   ``{"status": <wait status or null>, "timeout": bool, "isolation": {...}, "error": str|null}``.
"""

import ctypes
import json
import os
import resource
import select
import signal
import sys
import time
import traceback

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
CAPABILITY_VERSION_3 = 0x20080522
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 1
SETUP_FAILED = 126
PREIMPORT = ("typing", "math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string",
             "json", "fractions", "decimal", "hashlib", "random", "statistics", "copy", "operator", "dataclasses")
NET_EVENTS = ("socket.", "ctypes.", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen")

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source, target, fstype, flags, data=None) -> None:
    enc = (lambda s: s.encode() if isinstance(s, str) else s)
    _check(LIBC.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def enter_namespaces(root: bool) -> dict:
    """Unshare network, mount and PID namespaces; the flags that took effect."""
    uid, gid = os.getuid(), os.getgid()
    want = CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID
    for flags in ((want,) if root else (want | CLONE_NEWUSER, CLONE_NEWUSER | CLONE_NEWNET)) + (CLONE_NEWNET,):
        if LIBC.unshare(flags) == 0:
            if flags & CLONE_NEWUSER:  # keep our own ids inside the user namespace
                _write("/proc/self/setgroups", "deny")
                _write("/proc/self/uid_map", f"{uid} {uid} 1")
                _write("/proc/self/gid_map", f"{gid} {gid} 1")
            return {"net": bool(flags & CLONE_NEWNET), "mount": bool(flags & CLONE_NEWNS),
                    "pid": bool(flags & CLONE_NEWPID), "user": bool(flags & CLONE_NEWUSER)}
    return {"net": False, "mount": False, "pid": False, "user": False}


def _hidden_ancestor(path: str) -> str | None:
    """The first ancestor of `path` that other users cannot traverse (e.g. /root), or None."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    for i in range(1, len(parts) + 1):
        prefix = os.sep + os.sep.join(parts[:i])
        if not os.stat(prefix).st_mode & 0o001:
            return prefix
    return None


def isolate_filesystem(cfg: dict) -> dict:
    """A private /tmp as working directory, the stdlib reachable, every other mount read-only; what worked."""
    done = {"tmp": False, "stdlib": False, "readonly": False}
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    owner = cfg["uid"] if cfg["uid"] is not None else os.getuid()
    try:
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
               f"size={cfg['disk_mb']}m,nr_inodes=4096,mode=0700,uid={owner},gid={owner}")
        done["tmp"] = True
    except OSError:
        pass
    try:
        done["stdlib"] = _expose_stdlib(cfg["uid"])
    except OSError:
        pass
    done["readonly"] = _set_readonly("/", True, recursive=True)
    if done["readonly"] and done["tmp"]:
        _set_readonly("/tmp", False, recursive=False)
    return done


def _expose_stdlib(uid: int | None) -> bool:
    """Make the standard library readable for `uid` when an ancestor (e.g. /root) is closed to others.

    The closed ancestor is covered by an empty tmpfs in which only the stdlib is bound, read-only.
    """
    stdlib = os.path.dirname(os.__file__)
    hidden = _hidden_ancestor(stdlib) if uid is not None else None
    if hidden:
        fd = os.open(stdlib, os.O_PATH | os.O_DIRECTORY)
        try:
            _mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
            os.makedirs(stdlib)
            _mount(f"/proc/self/fd/{fd}", stdlib, None, MS_BIND | MS_REC)
        finally:
            os.close(fd)
    return True


def _set_readonly(path: str, readonly: bool, recursive: bool) -> bool:
    """Set or clear the read-only flag of the mount at `path` (and below) with mount_setattr (Linux 5.12)."""
    flag = MOUNT_ATTR_RDONLY
    attr = (ctypes.c_uint64 * 4)(flag if readonly else 0, 0 if readonly else flag, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    return LIBC.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), flags, attr, 32) == 0


def _limits(cfg: dict) -> None:
    cpu = int(cfg["timeout_s"]) + 1
    nproc = cfg["max_procs"]
    if cfg["uid"] is None:  # RLIMIT_NPROC counts all of this user's processes
        nproc += _count_user_processes(os.getuid())
    mem = cfg["memory_mb"] * 2**20
    for limit, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (mem, mem)),
                         (resource.RLIMIT_NPROC, (nproc, nproc)), (resource.RLIMIT_CORE, (0, 0)),
                         (resource.RLIMIT_FSIZE, (cfg["disk_mb"] * 2**20,) * 2), (resource.RLIMIT_NOFILE, (64, 64))):
        resource.setrlimit(limit, value)


def _count_user_processes(uid: int) -> int:
    return sum(1 for pid in os.listdir("/proc") if pid.isdigit() and _owner(pid) == uid)


def _owner(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _deny(event: str, args) -> None:
    """Audit hook used when no network namespace could be made (best effort, PEP 578)."""
    if event.startswith(NET_EVENTS):
        raise PermissionError(f"sandbox: {event} is not allowed")


def program(cfg: dict, code: str, isolation: dict) -> None:
    """The program process: limits, privilege drop, then the user's code. Never returns."""
    try:
        if cfg["uid"] is not None and not isolation.get("stdlib") and _hidden_ancestor(os.__file__):
            for name in PREIMPORT:  # the sandbox user could not read the standard library later
                __import__(name)
        _limits(cfg)
        if cfg["uid"] is not None:
            os.setgroups([])
            os.setgid(cfg["uid"])
            os.setuid(cfg["uid"])
        _drop_capabilities()
        os.closerange(3, 65536)
        os.chdir("/tmp" if isolation.get("tmp") else cfg["workdir"])
        os.umask(0o077)
        sys.argv = ["<sandbox>"]
        if not isolation["net"]:
            sys.addaudithook(_deny)
        compiled = compile(code, "<sandbox>", "exec")
    except SyntaxError:
        traceback.print_exc(limit=0)
        _finish(1)
    except BaseException as e:  # noqa: BLE001 - anything here is the sandbox's own failure
        os.write(2, f"sandbox setup failed: {e!r}\n".encode())
        os._exit(SETUP_FAILED)
    try:
        exec(compiled, {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as e:
        _finish(_exit_code(e))
    except BaseException as e:  # noqa: BLE001 - an uncaught exception is exit status 1, as in python
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # without the runner's frame
        _finish(1)
    _finish(0)


def _drop_capabilities() -> None:
    """No capabilities left (those of a user namespace we made included), none to gain by exec."""
    _check(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    header, data = (ctypes.c_uint32 * 2)(CAPABILITY_VERSION_3, 0), (ctypes.c_uint32 * 6)()
    _check(LIBC.capset(header, data), "capset")


def _exit_code(e: SystemExit) -> int:
    if e.code is None or isinstance(e.code, bool):
        return int(bool(e.code))
    if isinstance(e.code, int):
        return e.code & 0xFF
    print(e.code, file=sys.stderr)
    return 1


def _finish(status: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - a closed or broken stream cannot be reported
            pass
    os._exit(status)


def init(cfg: dict, code: str, isolation: dict, report_fd: int) -> None:
    """PID 1 of the new PID namespace: run the program, report its wait status, exit (killing the rest)."""
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if isolation["mount"]:
        try:
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError:
            pass
    pid = os.fork()
    if pid == 0:
        program(cfg, code, isolation)
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(1)
        if done == pid:
            os.write(report_fd, f"{status}\n".encode())
            os._exit(0)


def wait(pid: int, timeout_s: float) -> tuple[int, bool]:
    """(wait status, timed out) of child `pid`, killing it at the deadline."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # before Linux 5.3: poll
        fd = None
    if fd is not None:
        ready, _, _ = select.select([fd], [], [], timeout_s)
        os.close(fd)
        timed_out = not ready
    else:
        deadline = time.monotonic() + timeout_s
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None and time.monotonic() < deadline:
            time.sleep(0.005)
        timed_out = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1], timed_out


def kill_everything(uid: int | None) -> None:
    """Kill every process of `uid`, then every remaining descendant (re-parented to us), and reap them.

    Not called with `uid` after a PID namespace's init died: the kernel killed all of it, and we
    could not fork (our children would belong to the dead namespace).
    """
    if uid is not None:
        helper = os.fork()
        if helper == 0:
            try:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)  # every process of this user but the caller, atomically
            finally:
                os._exit(0)
        os.waitpid(helper, 0)
    me = str(os.getpid())
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0]:
                continue
        except ChildProcessError:
            return
        for pid in os.listdir("/proc"):
            if pid.isdigit() and _parent(pid) == me:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
        time.sleep(0.002)


def _parent(pid: str) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[1]
    except (OSError, IndexError):
        return None


def main() -> None:
    cfg = json.loads(sys.argv[1])
    status_fd = cfg["status_fd"]
    report = {"status": None, "timeout": False, "isolation": {}, "error": None}
    try:
        with open(cfg["code_path"], encoding="utf-8") as f:
            code = f.read()
        LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        isolation = (enter_namespaces(os.geteuid() == 0) if cfg["namespaces"]
                     else {"net": False, "mount": False, "pid": False, "user": False})
        if isolation["mount"]:
            isolation |= isolate_filesystem(cfg)  # best effort, step by step
        isolation["uid"] = cfg["uid"]
        report["isolation"] = isolation
        report_r, report_w = os.pipe()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.close(report_r)
            os.close(status_fd)
            if isolation["pid"]:
                init(cfg, code, isolation, report_w)
            program(cfg, code, isolation)
        os.close(report_w)
        status, report["timeout"] = wait(pid, cfg["timeout_s"])
        if isolation["pid"]:  # PID 1 reports the program's status; nothing when it was killed
            reported = os.read(report_r, 64).strip()
            status = int(reported) if reported else None
        report["status"] = status
        report["wall_s"] = time.monotonic() - start
        kill_everything(None if isolation["pid"] else cfg["uid"])
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which kills what is left
        report["error"] = f"{type(e).__name__}: {e}"
    os.write(status_fd, (json.dumps(report) + "\n").encode())
    os._exit(0)


if __name__ == "__main__":
    main()
