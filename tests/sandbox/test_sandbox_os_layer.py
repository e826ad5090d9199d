"""What the OS-level isolation holds on its own, with the in-process audit hook turned off.

The hostile suite mostly meets the audit hook first; these programs bypass it (audit_policy=False)
to show the namespaces, the uid drop and the mounts confine a program by themselves. Each program
records what it observed, and its test asserts the confinement; the host is checked afterwards.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks.sandbox import Job, Limits, Sandbox, SandboxError

PROGRAMS = {
    "no_network": (
        "import errno, socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=3)\n    ERR = None\n"
        "except OSError as exc:\n    ERR = exc.errno",
        "assert ERR in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL), ERR"),
    "only_loopback_interface": (
        "import socket\nNAMES = [name for _, name in socket.if_nameindex()]", "assert NAMES == ['lo'], NAMES"),
    "empty_proc": ("import os\nPROC = os.listdir('/proc')", "assert PROC == [], PROC"),
    "unprivileged_uid": ("import os\nIDS = (os.getuid(), os.geteuid(), os.getgid(), os.getgroups())",
                         "assert IDS[0] != 0 and IDS[1] != 0 and IDS[2] != 0 and IDS[3] == [], IDS"),
    "root_filesystem_read_only": (
        "import errno\ntry:\n    open('/etc/pobench_os_layer', 'w')\n    ERR = None\nexcept OSError as exc:\n"
        "    ERR = exc.errno", "assert ERR in (errno.EROFS, errno.EACCES), ERR"),
    "host_tmp_not_visible": ("import os\nTMP = sorted(os.listdir('/tmp'))", "assert TMP == ['work'], TMP"),
    "home_of_root_hidden": (
        "import os\ntry:\n    ROOT = sorted(os.listdir('/root'))\nexcept OSError:\n    ROOT = []",
        "assert not set(ROOT) - {'.pyenv'}, ROOT"),
    "own_pid_namespace": ("import os\nPID, PPID = os.getpid(), os.getppid()", "assert (PID, PPID) == (1, 0)"),
    "fork_bomb_capped_by_nproc": (
        "import os, time\nn = 0\ntry:\n    while n < 1000:\n        if os.fork() == 0:\n            time.sleep(60)\n"
        "            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nFORKED = n", "assert FORKED < 64, FORKED"),
    "disk_capped_by_tmpfs": (
        "import errno\ntry:\n    for i in range(64):\n        with open(f'f{i}', 'wb') as f:\n"
        "            f.write(b'0' * (8 << 20))\n    ERR = None\nexcept OSError as exc:\n    ERR = exc.errno",
        "assert ERR == errno.ENOSPC, ERR"),
}


@pytest.fixture(scope="module")
def os_only() -> Sandbox:
    if os.geteuid() != 0:
        pytest.skip("the namespaces+uid level needs root (CI runs as root)")
    try:
        return Sandbox(Limits(timeout_s=30.0, files_created=0), isolation="namespaces+uid", audit_policy=False)
    except SandboxError as exc:
        pytest.skip(f"namespaces+uid isolation unavailable: {exc}")


def test_os_layer_confines_a_program_without_the_audit_hook(os_only: Sandbox) -> None:
    names = list(PROGRAMS)
    results = os_only.run_many([Job(*PROGRAMS[name]) for name in names])
    failures = {name: r.message for name, r in zip(names, results) if not r.passed}
    assert failures == {}
    assert not Path("/etc/pobench_os_layer").exists()


def test_killing_every_process_it_can_reach_only_ends_itself(os_only: Sandbox) -> None:
    result = os_only.run("import os\nos.kill(-1, 9)\nimport time\ntime.sleep(5)", "assert False")
    assert not result.passed and result.status == "failed"
    assert os.getppid() > 0  # this test process and its parent are alive
