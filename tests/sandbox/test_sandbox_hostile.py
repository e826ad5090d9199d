"""Hostile programs: each tries to pass without answering correctly, to escape, or to harm the host.

Every program below is wrong on purpose (``answer()`` never honestly returns 42) and attacks the
sandbox in one way; each must be scored as a failure, and the host must be unaffected afterwards
(files outside the sandbox unchanged, no process left behind, this process alive). The suite runs
at every isolation level the machine allows, including the weakest ("process", the fallback for
users without root or user namespaces), where only the audit-hook policy and rlimits stand between
the program and the host.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.sandbox import ISOLATION_LEVELS, SLOT_UID_BASE, Job, Limits, Sandbox, SandboxError, detect_isolation

pytestmark = pytest.mark.slow  # seconds per test: outside the `tox -e fast` inner loop, run by CI

TEST = "assert answer() == 42"
FORGED = "'PASS:' + '0' * 32"
SECRET_VAR, SECRET = "POBENCH_HOSTILE_SECRET", "s3cr3t-token-value"

# (name, solution). The canary folder path is substituted for {canary}.
HOSTILE: list[tuple[str, str]] = [
    # -- the exit(0) family: ending the process "successfully" before or during the tests
    ("exit_builtin", "exit(0)"),
    ("quit_builtin", "quit()"),
    ("sys_exit", "import sys\nsys.exit(0)"),
    ("raise_systemexit_in_call", "def answer():\n    raise SystemExit(0)"),
    ("os_exit", "import os\nos._exit(0)"),
    ("os_exit_in_call", "import os\ndef answer():\n    os._exit(0)"),
    ("os_abort", "import os\nos.abort()"),
    ("keyboard_interrupt", "def answer():\n    raise KeyboardInterrupt"),
    # -- forging the success sentinel
    ("print_forged_sentinel", f"print({FORGED})\ndef answer():\n    return 0"),
    ("write_forged_sentinel_to_every_fd",
     f"import os\nfor fd in range(3, 128):\n    try:\n        os.write(fd, ({FORGED}).encode())\n"
     "    except OSError:\n        pass\ndef answer():\n    return 0"),
    ("steal_nonce_from_inherited_fds",
     "import os\nstolen = b''\nfor fd in range(0, 128):\n    try:\n        os.set_blocking(fd, False)\n"
     "        stolen += os.read(fd, 4096)\n    except OSError:\n        pass\n"
     "for fd in range(3, 128):\n    try:\n        os.write(fd, b'PASS:' + stolen[-32:])\n    except OSError:\n"
     "        pass\ndef answer():\n    return 0"),
    ("read_proc_self_memory", "f = open('/proc/self/mem', 'rb')\ndef answer():\n    return 0"),
    ("read_proc_self_cmdline_and_environ",
     "data = open('/proc/self/environ', 'rb').read() + open('/proc/self/cmdline', 'rb').read()"),
    ("read_parent_memory", "import os\nf = open(f'/proc/{os.getppid()}/mem', 'rb')"),
    ("gc_search_for_nonce",
     "import gc\nfound = [o for o in gc.get_objects() if isinstance(o, (str, bytes)) and len(o) == 32]\n"
     f"print({FORGED})"),
    ("frame_walk_for_harness_locals",
     "import sys\nf = sys._getframe(1)\nprint('PASS:' + str(f.f_locals.get('nonce')))"),
    ("traceback_frame_walk",
     "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    frame = e.__traceback__.tb_frame.f_back\n"
     "    print('PASS:' + str(frame.f_locals))"),
    ("generator_frame_walk",
     "def g():\n    yield 1\nframe = g().gi_frame\nprint(frame.f_back)"),
    ("current_frames", "import sys\nframes = sys._current_frames()"),
    ("signal_handler_frame",
     "import signal\nsignal.signal(signal.SIGALRM, lambda s, frame: print(frame.f_back.f_locals))\n"
     "signal.setitimer(signal.ITIMER_REAL, 0.01)"),
    ("ctypes_memory_read", "import ctypes\nctypes.string_at(id(object()), 64)"),
    ("ctypes_types_left_in_memory",
     "cdata = [c for c in object.__subclasses__() if c.__name__ == '_CData'][0]\n"
     "simple = [c for c in cdata.__subclasses__() if c.__name__ == '_SimpleCData'][0]\n"
     "class CharPointer(simple):\n    _type_ = 'z'\n"
     "def answer():\n    return 42 if CharPointer(id(b'raw read') + 32).value == b'raw read' else 0"),
    ("craft_code_object",
     "def answer():\n    return 0\nanswer.__code__ = answer.__code__.replace(co_consts=(None, 42))"),
    # -- patching builtins and the test harness
    ("override_builtins_abs",
     "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.isinstance = lambda *a: True\n"
     "def answer():\n    return 0\nassert_test = None"),
    ("shadow_builtin_in_globals", "def abs(x):\n    return 0\ndef answer():\n    return 0"),
    ("override_assertion_error",
     "import builtins\nbuiltins.AssertionError = type('Ignored', (Exception,), {})\ndef answer():\n    return 0"),
    ("patch_builtins_the_audit_hook_uses",
     "import builtins\nbuiltins.len = lambda x: 0\nbuiltins.any = lambda x: False\n"
     "builtins.isinstance = lambda *a: False\nbuiltins.PermissionError = type('Ignored', (Exception,), {})\n"
     "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    frame = e.__traceback__.tb_frame.f_back\n"
     "def answer():\n    return frame.f_locals.get('nonce') and 42"),
    ("patch_path_functions_then_write_outside",
     "import os, posixpath\nos.chdir('{canary}')\nos.getcwd = lambda: '/nowhere'\n"
     "posixpath.realpath = lambda p, **k: '/nowhere/' + str(p)\nos.path.realpath = posixpath.realpath\n"
     "open('pwned', 'w').write('x')\ndef answer():\n    return 42"),
    ("patch_exec_and_compile",
     "import builtins\nbuiltins.exec = lambda *a, **k: None\nbuiltins.compile = lambda *a, **k: compile('pass', "
     "'x', 'exec')\ndef answer():\n    return 0"),
    ("patch_main_module",
     "import __main__, sys\n__main__.__dict__.clear()\nsys.modules['ast'] = None\ndef answer():\n    return 0"),
    ("settrace_skip_asserts",
     "import sys\ndef tracer(frame, event, arg):\n    return None\nsys.settrace(tracer)\ndef answer():\n    return 0"),
    ("patch_stdout_and_print",
     "import sys, builtins\nsys.stdout.write = lambda s: 0\nbuiltins.print = lambda *a, **k: None\n"
     "class Fake:\n    def write(self, s):\n        return 0\n    def flush(self):\n        pass\nsys.stdout = Fake()\n"
     "def answer():\n    return 0"),
    ("atexit_prints_sentinel",
     f"import atexit\natexit.register(lambda: print({FORGED}))\ndef answer():\n    return 0"),
    ("finalizer_prints_sentinel",
     f"class Late:\n    def __del__(self):\n        print({FORGED})\nkeep = Late()\ndef answer():\n    return 0"),
    ("audit_hook_of_its_own",
     "import sys\nsys.addaudithook(lambda event, args: None)\ndef answer():\n    return 0"),
    # -- threads and children that outlive the program
    ("lingering_thread_prints_later",
     f"import threading, time\ndef late():\n    time.sleep(0.2)\n    print({FORGED})\n"
     "threading.Thread(target=late, daemon=True).start()\ndef answer():\n    return 0"),
    ("lingering_thread_with_right_answer",
     "import threading, time\nthreading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
     "def answer():\n    return 42"),
    ("thread_exits_process_during_tests",
     "import threading, os, time\ndef killer():\n    time.sleep(0.05)\n    os._exit(0)\n"
     "threading.Thread(target=killer).start()\ndef answer():\n    time.sleep(1)\n    return 0"),
    ("lingering_child_process", "import subprocess\nsubprocess.Popen(['sleep', '3071'])"),
    ("fork_and_linger", "import os\nif os.fork() == 0:\n    import time\n    time.sleep(300)"),
    ("os_system", "import os\nos.system('sleep 3071 &')"),
    ("exec_replaces_harness", "import os\nos.execv('/bin/true', ['true'])"),
    ("posix_spawn_child", "import os\nos.posix_spawn('/bin/sleep', ['sleep', '3071'], {})"),
    ("posixsubprocess_direct", "import _posixsubprocess"),
    # -- resource exhaustion
    ("fork_bomb", "import os\nwhile True:\n    os.fork()"),
    ("thread_bomb",
     "import threading, time\nfor _ in range(100000):\n    threading.Thread(target=time.sleep, args=(60,)).start()"),
    ("infinite_loop", "while True:\n    pass"),
    ("infinite_loop_ignoring_exceptions",
     "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass"),
    ("memory_bomb_single", "x = bytearray(1 << 40)"),
    ("memory_bomb_gradual", "chunks = []\nwhile True:\n    chunks.append(bytearray(50 << 20))"),
    ("disk_filler_one_file", "with open('fill', 'wb') as f:\n    while True:\n        f.write(b'0' * (1 << 20))"),
    ("disk_filler_many_files",
     "i = 0\nwhile True:\n    with open(f'fill{i}', 'wb') as f:\n        f.write(b'0' * (8 << 20))\n    i += 1"),
    ("stdout_flood", "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)"),
    ("deep_recursion_crash", "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1)\nf(0)"),
    ("raise_own_rlimits",
     "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))"),
    # -- network
    ("network_socket_connect",
     "import socket\ns = socket.create_connection(('1.1.1.1', 80), timeout=2)\ndef answer():\n    return 42"),
    ("network_urllib", "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)\n"
                       "def answer():\n    return 42"),
    ("network_dns", "import socket\nsocket.gethostbyname('example.com')\ndef answer():\n    return 42"),
    ("unix_socketpair", "import socket\na, b = socket.socketpair()\ndef answer():\n    return 42"),
    # -- secrets and the host filesystem
    ("read_secret_from_environment",
     f"import os\ndef answer():\n    return 42 if os.environ.get('{SECRET_VAR}') == '{SECRET}' else 0"),
    ("read_secret_from_parent_environ",
     f"import os\ndata = open(f'/proc/{{os.getppid()}}/environ', 'rb').read()\n"
     f"def answer():\n    return 42 if b'{SECRET}' in data else 0"),
    ("write_outside_workdir", "open('{canary}/pwned', 'w').write('pwned')\ndef answer():\n    return 42"),
    ("overwrite_host_file", "open('{canary}/keep.txt', 'w').write('changed')\ndef answer():\n    return 42"),
    ("delete_host_file", "import os\nos.remove('{canary}/keep.txt')\ndef answer():\n    return 42"),
    ("symlink_escape",
     "import os\nos.symlink('{canary}/keep.txt', 'link')\nopen('link', 'w').write('changed')\ndef answer():\n    return 42"),
    ("hardlink_escape",
     "import os\nos.link('{canary}/keep.txt', 'hard')\nopen('hard', 'w').write('changed')\ndef answer():\n    return 42"),
    ("dir_fd_escape",
     "import os\nfd = os.open('{canary}', os.O_RDONLY)\nos.mkdir('pwned_dir', dir_fd=fd)\ndef answer():\n    return 42"),
    ("proc_through_a_directory_fd",
     "import os\nroot = os.open('/', os.O_RDONLY)\nproc = os.open('proc', os.O_RDONLY, dir_fd=root)\n"
     "data = os.read(os.open('self/environ', os.O_RDONLY, dir_fd=proc), 100000)\n"
     f"def answer():\n    return 42 if b'{SECRET_VAR}' in data else 0"),
    ("write_to_etc", "open('/etc/pobench_pwned', 'w').write('x')\ndef answer():\n    return 42"),
    # -- signals to the parent and to other processes
    ("kill_parent", "import os\nos.kill(os.getppid(), 9)\ndef answer():\n    return 42"),
    ("signal_module_for_kill", "import signal, os\nsignal.pthread_kill(1, 9)\ndef answer():\n    return 42"),
    ("kill_process_group", "import os\nos.killpg(0, 9)\ndef answer():\n    return 42"),
    ("kill_everything", "import os\nos.kill(-1, 9)\ndef answer():\n    return 42"),
    ("read_stdin", "data = input()\ndef answer():\n    return 42"),
]


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world-writable host folder with a file: only the sandbox stands between it and the programs."""
    folder = tmp_path_factory.mktemp("canary")
    folder.chmod(0o777)
    (folder / "keep.txt").write_text("original")
    (folder / "keep.txt").chmod(0o666)
    return folder


def _levels() -> list[str]:
    """Every isolation level this machine can run (as root: all three)."""
    levels = []
    for level in ISOLATION_LEVELS:
        try:
            Sandbox(isolation=level)
        except SandboxError:
            continue
        levels.append(level)
    assert detect_isolation() in levels
    return levels


def _sandbox_processes() -> list[str]:
    """Processes left by sandboxed programs: any with a slot uid, the harness/unshare command line, or
    the hostile programs' ``sleep 3071`` (an odd duration, so an unrelated ``sleep`` on a shared
    machine is not mistaken for a leak)."""
    out = subprocess.run(["ps", "-eo", "pid=,uid=,stat=,args="], capture_output=True, text=True).stdout
    left = []
    for line in out.splitlines():
        pid, uid, stat, args = (line.split(None, 3) + [""])[:4]
        if int(pid) == os.getpid() or stat.startswith("Z"):  # zombies hold no resources but a pid
            continue
        if SLOT_UID_BASE <= int(uid) < SLOT_UID_BASE + 500 or "_sandbox_main" in args or "sleep 3071" in args:
            left.append(line.strip()[:200])
    return left


def test_suite_is_large_enough() -> None:
    assert len(HOSTILE) >= 30
    assert len({name for name, _ in HOSTILE}) == len(HOSTILE)


@pytest.mark.timeout(600)  # a hang guard: every program is bounded by the sandbox's 3 s timeout
@pytest.mark.parametrize("level", _levels())
def test_every_hostile_program_fails_and_the_host_is_intact(level: str, canary: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_VAR, SECRET)
    box = Sandbox(Limits(timeout_s=3.0, memory_bytes=1 << 30, file_size_bytes=16 << 20), isolation=level)
    jobs = [Job(source.replace("{canary}", str(canary)), TEST) for _, source in HOSTILE]
    results = box.run_many(jobs)

    passed = [name for (name, _), r in zip(HOSTILE, results) if r.passed]
    assert passed == [], f"hostile programs scored as passing at level {level}: {passed}"
    assert all(r.isolation == level for r in results)
    assert all(r.status in ("failed", "timeout") for r in results), \
        [(name, r.status, r.message) for (name, _), r in zip(HOSTILE, results) if r.status not in ("failed", "timeout")]
    for (name, _), r in zip(HOSTILE, results):
        assert SECRET not in r.stdout + r.stderr + r.message, name

    # the host: canary folder untouched, no file in /etc, nothing left running
    assert sorted(p.name for p in canary.iterdir()) == ["keep.txt"]
    assert (canary / "keep.txt").read_text() == "original"
    assert not Path("/etc/pobench_pwned").exists()
    assert _no_sandbox_process_within(seconds=5) == []


def _no_sandbox_process_within(seconds: float) -> list[str]:
    """Leftovers after a grace period (a killed process may take a moment to release its memory)."""
    import time
    deadline = time.monotonic() + seconds
    while (left := _sandbox_processes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.parametrize("level", _levels())
def test_the_honest_version_passes_at_the_same_level(level: str) -> None:
    """Guards the suite above against failing for the wrong reason (a sandbox that fails everything)."""
    box = Sandbox(Limits(timeout_s=30.0), isolation=level)
    assert box.run("def answer():\n    return 42", TEST).passed


def test_a_parent_killed_mid_run_takes_the_program_down(tmp_path: Path) -> None:
    """Kill the evaluating process while a program runs: nothing may keep running."""
    import shutil
    import time
    if detect_isolation() == "process" and shutil.which("setpriv") is None:
        pytest.skip("the process level links a program to its parent through setpriv (util-linux), absent here")
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom tasks.sandbox import Sandbox, Limits\n"
        "box = Sandbox(Limits(timeout_s=120))\nprint('ready', flush=True)\n"
        "box.run('import time\\ntime.sleep(300)')\n" % str(Path(__file__).resolve().parents[2]))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _sandbox_processes():
            time.sleep(0.05)
        assert _sandbox_processes(), "the sandboxed program never started"
    finally:
        parent.kill()
        parent.wait()
    assert _no_sandbox_process_within(seconds=10) == []


@pytest.mark.xfail(strict=True, reason="known limit (docs/code.md): an object whose __eq__ always answers True "
                                       "fools `assert f(x) == y`; the sandbox cannot tell it from a real answer")
def test_always_equal_object_is_a_known_limit() -> None:
    box = Sandbox(Limits(timeout_s=3.0))
    solution = "class AlwaysEqual:\n    def __eq__(self, other):\n        return True\ndef answer():\n" \
               "    return AlwaysEqual()"
    assert not box.run(solution, TEST).passed


def test_isolation_level_that_is_not_available_is_refused() -> None:
    if os.geteuid() == 0:
        pytest.skip("root has every level")
    with pytest.raises(SandboxError):
        Sandbox(isolation="namespaces+uid")
