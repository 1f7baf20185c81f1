"""How the stack tells a process it started is gone: only when none of its threads runs."""

import subprocess
import sys
import time

from runners.stack.process import _alive

# The main thread exits (a zombie in /proc/<pid>/stat) while a second thread still runs for a second.
MAIN_THREAD_EXITS_FIRST = (
    "import ctypes, threading, time; threading.Thread(target=time.sleep, args=(1.5,)).start(); "
    "time.sleep(0.3); ctypes.CDLL(None).pthread_exit(None)"
)


def test_a_process_whose_main_thread_exited_is_alive_until_its_last_thread_ends():
    proc = subprocess.Popen([sys.executable, "-c", MAIN_THREAD_EXITS_FIRST])
    try:
        time.sleep(0.8)
        with open(f"/proc/{proc.pid}/stat") as stat:
            assert stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # what the main thread's state says
        assert _alive(proc.pid)
        deadline = time.monotonic() + 10
        while _alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(proc.pid)  # a zombie no thread of which runs (not reaped yet) is gone
    finally:
        proc.wait(10)
