"""Starting, waiting for and stopping processes, on psutil: what the service manager, the stack and
the development harness (flight_platform_dev) share."""

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

STOP_TIMEOUT_S = 30.0  # SIGTERM -> SIGKILL: a streaming run stores and commits its batch first
KILL_TIMEOUT_S = 30.0  # SIGKILL -> gone: a JVM takes a moment to die
COMMAND_LINE_CHARS = 200  # of a process reported as killed
# A process that joins a group while it stops is signalled once it is this old: between its fork and
# its exec it still has its parent's Python signal handler, which only flags the signal, and the exec
# drops the flag.
NEWCOMER_AGE_S = 0.5


def _lower_session(niceness: int) -> None:
    """Lower the new session's process to `niceness`, and the session with it: under Linux's
    autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled) the CPU is shared between
    sessions first and a process's nice counts only inside its own, so a niced server alone in its
    session took as much CPU as the broker beside it (measured: two busy loops on one core, 4.9 and
    5.0 CPU-s in 10 s at nice 19 and 0; 0.1 and 9.8 with the session's nice set as well)."""
    os.nice(niceness)
    with contextlib.suppress(OSError):  # a kernel without autogroup has no such file
        Path("/proc/self/autogroup").write_text(str(niceness))


def start(command: Sequence, log_file: Path | None = None, env: Mapping[str, str] | None = None,
          cwd: Path | None = None, niceness: int = 0) -> subprocess.Popen:
    """`command` in a session of its own, so that a Ctrl-C meant for the caller does not reach it
    behind the caller's back, and stopping its group reaches what it spawned. Its output is appended
    to `log_file` (None: the caller's); it, every thread it starts and its session run at `niceness`."""
    lower = (lambda: _lower_session(niceness)) if niceness else None
    if log_file is None:
        return subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=lower)
    with open(log_file, "ab") as log:
        return subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=lower)


def alive(pid: int) -> bool:
    """Whether any thread of `pid` still runs. A killed JVM's main thread is a zombie before its
    other threads have ended, and its sockets close only with the last of them."""
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    except ChildProcessError:
        pass
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE or process.num_threads() > 1
    except psutil.NoSuchProcess:
        return False


def command_line(pid: int) -> str | None:
    """The command line of `pid`, None if no such process runs."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def tree(pid: int) -> list[int]:
    """`pid` and every process below it (children, grandchildren, ...)."""
    try:
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.2,
               process: subprocess.Popen | None = None):
    """Poll `condition` until it returns something true, and return that. TimeoutError once
    `timeout` seconds have passed; RuntimeError if `process` (the one expected to make it true)
    exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: {process.args[0]} exited with code {process.returncode}")
        if result := condition():
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def answers(url: str) -> bool:
    """Whether `url` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def _signal(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill(pids: Sequence[int]) -> None:
    """kill -9, as a crash or the OOM killer would, and return once every one has ended."""
    _signal(pids, signal.SIGKILL)
    wait_until(lambda: not any(alive(pid) for pid in pids), KILL_TIMEOUT_S,
               f"processes {list(pids)} to end after SIGKILL", interval=0.05)


def terminate(pids: Sequence[int], timeout: float = STOP_TIMEOUT_S,
              give_up: Callable[[], bool] = lambda: False,
              before_kill: Callable[[list[int]], None] = lambda left: None) -> set[int]:
    """SIGTERM them together (a server's workers would be orphaned otherwise), SIGKILL what is left
    after `timeout`, or as soon as `give_up()` says the rest cannot end by itself, and return once
    every one has ended. `before_kill` gets what is left first. Returns the pids that had to be
    killed."""
    _signal(pids, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not any(alive(pid) for pid in pids) or give_up(), timeout,
                   f"processes {list(pids)} to end after SIGTERM", interval=0.05)
    left = [pid for pid in pids if alive(pid)]
    if left:
        before_kill(left)
    kill(left)
    return set(left)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


def _members(groups: set[int]) -> set[int]:
    """The processes of the process `groups`."""
    members = set()
    for process in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):  # ended meanwhile
            if os.getpgid(process.pid) in groups:
                members.add(process.pid)
    return members


def _age(pid: int) -> float:
    """Seconds since `pid` started (0 if it has ended)."""
    try:
        return time.time() - psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def _describe(pid: int) -> str:
    return f"{pid} {(command_line(pid) or '(ended)')[:COMMAND_LINE_CHARS]}"


def stop(*started: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> list[str]:
    """SIGTERM each process, its process group and any descendant that left the group, all at once
    (they stop side by side); SIGKILL what is left after `timeout`. A process that joins a group
    while it stops gets a SIGTERM of its own: `dg dev` restarts a code server that exits before
    `dg dev` itself has stopped. Returns what had to be killed ('pid command line' each)."""
    groups = {process.pid for process in started}
    # Read just before the signal: one started after the read gets a SIGTERM of its own, even if
    # the group's reached it too, rather than none.
    signaled = _members(groups)
    # Descendants that left the groups (into a session of their own) are signalled one by one; a
    # member signalled twice would be interrupted in its handler of the first.
    others = [pid for process in started for pid in tree(process.pid) if pid not in signaled]
    signaled |= set(others)
    names = ", ".join(str(process.args[0]) for process in started)

    def ended() -> bool:
        for process in started:
            process.poll()  # reaps it: a zombie still counts as a member of its group
        newcomers = [pid for pid in _members(groups) - signaled if _age(pid) >= NEWCOMER_AGE_S]
        _signal(newcomers, signal.SIGTERM)
        signaled.update(newcomers)
        return (not any(_group_alive(group) for group in groups)
                and not any(alive(pid) for pid in others))

    def send(sig: signal.Signals) -> None:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        _signal(others, sig)

    send(signal.SIGTERM)
    try:
        wait_until(ended, timeout, f"{names} to stop", interval=0.05)
        killed = []
    except TimeoutError:
        killed = [_describe(pid) for pid in sorted(_members(groups) | set(others)) if alive(pid)]
        send(signal.SIGKILL)
        wait_until(ended, KILL_TIMEOUT_S, f"{names} to end after SIGKILL", interval=0.05)
    for process in started:
        process.wait()
    return killed


def hard_kill(process: subprocess.Popen, *also: int) -> int:
    """kill -9 `process`, everything it started and the pids `also`, as a power cut would;
    returns how many processes were killed."""
    pids = [*tree(process.pid), *also]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # and whatever its group started meanwhile
    kill(pids)
    process.wait()
    return len(pids)
