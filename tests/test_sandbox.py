"""The sandbox against hostile programs: each is contained, reported with a reason, the host unharmed."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import pytest

from rlhfscale import sandbox

LEAK_WAIT_S = 0.5

# Leftovers are looked for machine-wide, so no other test may run the sandbox meanwhile (`make test` runs the
# tests of other modules in parallel workers, these after them, alone).
pytestmark = pytest.mark.serial


def sandbox_processes() -> list[int]:
    """Live (non-zombie) processes of the sandbox: the runner's command line, or a sandbox user id."""
    base = sandbox._uid_base()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue
        if b"_sandbox_child.py" in cmdline or (base is not None and base <= uid < base + sandbox.UID_SLOTS):
            found.append(int(pid))
    return found


def assert_no_leftovers() -> None:
    deadline = time.monotonic() + LEAK_WAIT_S
    while (left := sandbox_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == [], f"sandbox processes left running: {left}"


def scratch_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("rlhfscale-sandbox-") and p != "rlhfscale-sandbox-uids"}


@pytest.fixture
def fallback(monkeypatch):
    """The path taken where no namespace and no own user id are available."""
    monkeypatch.setattr(sandbox, "USE_NAMESPACES", False)
    monkeypatch.setattr(sandbox, "_uid_base", lambda: None)


# ---- ordinary programs ----------------------------------------------------------------------------
def test_stdin_stdout_round_trip():
    r = sandbox.run("import sys\nname = input()\nrest = sys.stdin.read()\nprint(name.upper(), len(rest.split()))",
                    stdin="ada\n1 2 3\n4\n")
    assert (r.ok, r.reason, r.returncode, r.stdout) == (True, "ok", 0, "ADA 4\n")


def test_syntax_error_exit_status_and_exception():
    r = sandbox.run("def f(:\n    pass\n")
    assert (r.ok, r.reason, r.returncode) == (False, "error", 1)
    assert "SyntaxError" in r.stderr
    assert sandbox.run("import sys; print('a'); sys.exit(3)").returncode == 3
    r = sandbox.run("raise ValueError('boom')")
    assert (r.reason, r.returncode) == ("error", 1) and "ValueError: boom" in r.stderr
    assert "_sandbox_child" not in r.stderr  # the traceback shows only the program's frames


def test_working_directory_is_writable_and_empty():
    r = sandbox.run("import os\nprint(os.listdir('.'))\nopen('a.txt', 'w').write('hi')\nprint(open('a.txt').read())")
    assert r.stdout == "[]\nhi\n"


# ---- hostile programs -----------------------------------------------------------------------------
def test_infinite_loop_times_out():
    start = time.monotonic()
    r = sandbox.run("while True:\n    pass\n", timeout_s=1.0)
    assert (r.ok, r.reason) == (False, "timeout")
    assert time.monotonic() - start < 4.0
    assert_no_leftovers()


def test_fork_bomb_is_contained():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    r = sandbox.run(bomb, timeout_s=1.5, max_procs=16)
    assert r.reason == "timeout"
    assert_no_leftovers()
    assert sandbox.run("print(6 * 7)").stdout == "42\n"  # the host can still start processes


def test_memory_bomb_is_contained():
    r = sandbox.run("x = bytearray(10**10)", memory_mb=256)
    assert (r.ok, r.reason) == (False, "memory")
    r = sandbox.run("chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))\n", memory_mb=256)
    assert r.reason == "memory"


def test_huge_output_is_capped():
    r = sandbox.run("while True:\n    print('x' * 100000)\n", max_output_bytes=100_000)
    assert (r.ok, r.reason) == (False, "output_limit")
    assert len(r.stdout) + len(r.stderr) <= 100_000
    assert_no_leftovers()


def test_writes_outside_the_working_directory_fail(tmp_path):
    info = sandbox.isolation()
    if not info.get("mount") and info.get("uid") is None:
        pytest.skip("no mount namespace and no own user id here: only RLIMIT_FSIZE guards files")
    shared = Path(tempfile.mkdtemp(dir="/var/tmp"))  # world-writable and world-traversable
    shared.chmod(0o777)
    targets = [shared / "escape.txt", Path("/etc/rlhfscale-sandbox-escape"), Path.home() / "rlhfscale-escape",
               Path(__file__).with_name("rlhfscale-escape")]
    code = "written = []\n"
    for t in targets:
        code += f"try:\n    open({str(t)!r}, 'w').write('x')\n    written.append({str(t)!r})\nexcept OSError:\n    pass\n"
    code += "print(written)\n"
    try:
        r = sandbox.run(code)
        assert r.stdout == "[]\n", r.stderr
        assert not any(t.exists() for t in targets)
    finally:
        for t in targets:
            t.unlink(missing_ok=True)
        shared.rmdir()


def test_parent_environment_is_hidden(monkeypatch):
    secret = "s3cret-" + os.urandom(8).hex()
    monkeypatch.setenv("RLHFSCALE_TEST_SECRET", secret)
    code = ("import os\nprint(dict(os.environ))\n"
            f"for path in ('/proc/{os.getpid()}/environ', f'/proc/{{os.getppid()}}/environ', '/proc/1/environ'):\n"
            "    try:\n        print(open(path, 'rb').read())\n    except OSError as e:\n        print(type(e).__name__)\n")
    r = sandbox.run(code)
    assert r.ok, r.stderr
    assert secret not in r.stdout + r.stderr
    assert "RLHFSCALE_TEST_SECRET" not in r.stdout


def test_network_connection_fails():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        r = sandbox.run(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                        "s.sendall(b'leak')\nprint('connected')")
        assert (r.ok, r.reason) == (False, "error")
        assert "connected" not in r.stdout
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_killing_the_parent_does_not_harm_the_host():
    me = os.getpid()
    code = ("import os, signal\nfor pid in (os.getppid(), " + str(me) + ", 1):\n"
            "    try:\n        os.kill(pid, signal.SIGKILL)\n        print('killed', pid, flush=True)\n"
            "    except OSError as e:\n        print(type(e).__name__, flush=True)\n")
    r = sandbox.run(code)
    assert r.reason in {"ok", "killed"}
    assert os.getpid() == me and os.getppid() != 1  # still alive, still attached
    assert f"killed {me}" not in r.stdout
    assert_no_leftovers()


DOUBLE_FORK = """import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(1.0)
        with open({late!r}, 'w') as f:
            f.write('survived')
        print('survived', flush=True)
    os._exit(0)
time.sleep(0.1)
print('parent done', flush=True)
"""


def check_detached_descendant_is_killed(tmp_path: Path) -> None:
    drop = Path(tempfile.mkdtemp(dir="/var/tmp"))
    drop.chmod(0o777)
    late = drop / "late.txt"
    try:
        r = sandbox.run(DOUBLE_FORK.format(late=str(late)))
        assert (r.reason, r.stdout) == ("ok", "parent done\n")
        assert_no_leftovers()  # the grandchild is still sleeping now if it escaped
        time.sleep(1.3)
        assert not late.exists()
    finally:
        late.unlink(missing_ok=True)
        drop.rmdir()


def test_detached_descendants_are_killed(tmp_path):
    check_detached_descendant_is_killed(tmp_path)


def test_two_hundred_programs_in_parallel_leak_nothing():
    before = scratch_dirs()
    programs = [(f"import sys\nprint({i} * int(sys.stdin.read()))", "3") for i in range(200)]
    results = sandbox.run_many(programs, max_workers=8)
    assert [r.stdout for r in results] == [f"{3 * i}\n" for i in range(200)]
    assert all(r.reason == "ok" for r in results)
    assert_no_leftovers()
    assert scratch_dirs() == before


def test_isolation_report_names_what_was_used():
    info = sandbox.isolation()
    assert {"net", "mount", "pid", "uid"} <= set(info)
    if os.geteuid() == 0:
        assert info["uid"] is not None  # root always drops to an own id so RLIMIT_NPROC applies


# ---- the fallback path (no namespaces, no own user id) --------------------------------------------
def test_fallback_blocks_network_by_audit_hook(fallback):
    r = sandbox.run("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)")
    assert r.reason == "error" and "not allowed" in r.stderr
    r = sandbox.run("import subprocess\nsubprocess.run(['true'])")
    assert r.reason == "error" and "not allowed" in r.stderr
    assert r.isolation["net"] is False


def test_fallback_kills_detached_descendants(fallback, tmp_path):
    check_detached_descendant_is_killed(tmp_path)


def test_fallback_survives_the_runner_being_killed(fallback):
    code = "import os, signal, time\nos.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(30)\n"
    start = time.monotonic()
    r = sandbox.run(code, timeout_s=2.0)
    assert r.reason == "killed"
    assert time.monotonic() - start < 5.0
    assert_no_leftovers()
