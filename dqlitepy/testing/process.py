"""A node in a process of its own: ``dqlitepy server``, which a test can kill and pause.

The process runs the ``dqlitepy`` command line (``dqlitepy server -a ADDRESS -d DIR ...``)
in a fresh interpreter, the one running the tests, with the same ``dqlitepy`` first on its
path.  Its output goes to ``<data dir>.log`` beside the data directory (a data directory
may be a mount point), one header line per start.

Only processes the harness started are signalled, by their PID, and each is waited for:

* on Linux, a node started from the main thread asks the kernel to kill it when the
  test process dies (``PR_SET_PDEATHSIG``), so a crashed or killed test run leaves no node
  behind; it asks from inside the new interpreter rather than through ``preexec_fn``,
  which can deadlock a test process that runs threads;
* nodes run in a session of their own, so a Ctrl-C in the terminal reaches the test run,
  whose teardown stops them, and not the nodes behind its back;
* at interpreter exit, nodes still running are killed.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from ssl import SSLContext

import dqlitepy

from ._support import HarnessError, accepts, free_port, process_state, tail
from .nodes import ServerNode

__all__ = ["ProcessNode"]

# Run in the node's interpreter before the command line: PR_SET_PDEATHSIG is 1 in
# <linux/prctl.h>.  The parent's PID is checked after the call: a parent that died before
# it would never signal.
_LAUNCHER = """\
import os, sys
parent = os.environ.pop("DQLITEPY_TESTING_PARENT", "")
if parent:
    import ctypes, signal
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(parent):
        sys.exit("dqlitepy.testing: the test process is gone")
from dqlitepy.cli import main
sys.exit(main(sys.argv[1:]))
"""

# Variables of the test's environment the harness sets itself (or not at all).  The other
# DQLITEPY_* variables pass: a test may set DQLITEPY_ADVERTISE or DQLITEPY_SNAPSHOT_ENTRIES
# for its nodes.
_SCRUBBED = (
    "DQLITEPY_CLUSTER_KEY",
    "DQLITEPY_CLUSTER_KEY_FILE",
    "DQLITEPY_CONFIG",
    "DQLITEPY_TESTING_PARENT",
)

_running: weakref.WeakSet[ProcessNode] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    """Nodes nobody closed (a harness used outside its fixtures) die with the interpreter."""
    for node in list(_running):
        with contextlib.suppress(Exception):
            node.stop(signal.SIGKILL, timeout=5)


def _package_root() -> str | None:
    """The directory the running ``dqlitepy`` was imported from, if a fresh interpreter
    would not find it there by itself (a source checkout on ``sys.path``, an editable
    install).  An installed copy's site-packages is never put on ``PYTHONPATH``: there it
    would come before the standard library."""
    root = Path(dqlitepy.__file__).resolve().parent.parent
    sites = {*site.getsitepackages(), site.getusersitepackages()}
    return None if any(Path(s).resolve() == root for s in sites) else str(root)


class ProcessNode(ServerNode):
    """One ``dqlitepy server`` process.

    Args:
        data_dir: its data directory (a temporary one, removed at :meth:`close`, if None).
        address: where it is dialled (a free loopback port if None): where it listens, or,
            with ``listen``, the address it advertises.
        cluster_key: the cluster key (it replicates) or None (a standalone node).
        join: addresses to join through.
        options: more ``dqlitepy server`` arguments (``["--max-connections", "8"]``).
        prefix: a command the server runs under, such as ``["ip", "netns", "exec", NS]``;
            it must exec the server (not fork it), so that signals reach the server.
        listen: where it listens (``-a``), when not ``address``: it then runs with
            ``--advertise ADDRESS``.
        ssl: the TLS context :meth:`connect` and :meth:`client` dial it with.
        name: a short name for reports.

    Attributes:
        process: the running process (None before :meth:`start` and after a stop).
        log_path: the file its output goes to.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        address: str | None = None,
        *,
        cluster_key: str | None = None,
        join: list[str] | None = None,
        options: list[str] | None = None,
        prefix: list[str] | None = None,
        listen: str | None = None,
        ssl: SSLContext | None = None,
        name: str = "node",
    ) -> None:
        self._own_dir = data_dir is None
        data_dir = data_dir or Path(tempfile.mkdtemp(prefix="dqlitepy-testing-node-"))
        super().__init__(
            address or f"127.0.0.1:{free_port()}",
            data_dir,
            cluster_key=cluster_key,
            ssl=ssl,
            name=name,
        )
        self.listen = listen
        self.join = list(join or [])
        self.options = list(options or [])
        self.prefix = list(prefix or [])
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused and self.running

    @property
    def pid(self) -> int | None:
        """The process's PID while it runs."""
        return self.process.pid if self.running and self.process is not None else None

    def argv(self) -> list[str]:
        """The ``dqlitepy server`` arguments the node runs with."""
        where = ["-a", self.address] if self.listen is None else ["-a", self.listen]
        if self.listen is not None:
            where += ["--advertise", self.address]
        join = ["-j", ",".join(self.join)] if self.join else []
        return ["server", *where, "-d", str(self.data_dir), *join, *self.options]

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
        path = os.pathsep.join(filter(None, [_package_root(), env.get("PYTHONPATH")]))
        if path:
            env["PYTHONPATH"] = path
        if self.cluster_key is not None:
            env["DQLITEPY_CLUSTER_KEY"] = self.cluster_key
        # The kernel signals a child when the *thread* that forked it ends: only a child of
        # the main thread may ask to die with its parent.
        if (
            sys.platform.startswith("linux")
            and threading.current_thread() is threading.main_thread()
        ):
            env["DQLITEPY_TESTING_PARENT"] = str(os.getpid())
        return env

    def launch(self) -> None:
        """Start the process without waiting for it (see :meth:`wait_serving`)."""
        if self.running:
            raise HarnessError(f"{self.name} ({self.address}) is already running")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        argv = self.argv()
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%H:%M:%S")
            log.write(f"=== {stamp} dqlitepy {' '.join(argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [*self.prefix, sys.executable, "-c", _LAUNCHER, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment(),
                start_new_session=True,
            )
        self._paused = False
        _running.add(self)

    def wait_serving(self, timeout: float = 60.0) -> None:
        """Wait until the started process accepts connections.

        Raises:
            HarnessError: it exited, or did not accept connections within ``timeout``;
                the process is killed then, and the message ends with its log.
        """
        deadline = time.monotonic() + timeout
        while not accepts(self.address):
            process = self.process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise HarnessError(
                    f"{self.name}: dqlitepy server on {self.address} exited early "
                    f"(status {code}):\n{tail(self.log(), 40)}"
                )
            if time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise HarnessError(
                    f"{self.name}: dqlitepy server on {self.address} did not start in "
                    f"{timeout:g} s:\n{tail(self.log(), 40)}"
                )
            time.sleep(0.05)

    def start(self, timeout: float = 60.0) -> ProcessNode:
        """Start the process and wait until it accepts connections; returns the node."""
        self.launch()
        self.wait_serving(timeout)
        return self

    def log(self) -> str:
        """The process's output so far, over every start."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the process to exit; returns its exit status.

        SIGTERM (the default) is a graceful stop: a leader hands leadership over first.  A
        process still alive after ``timeout`` seconds is killed.  A paused process is let
        run on, so that it can act on the signal.
        """
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(sig)
            if self._paused and sig != signal.SIGKILL:
                process.send_signal(signal.SIGCONT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        self.process = None
        self._paused = False
        _running.discard(self)
        return process.returncode

    def kill(self) -> None:
        """SIGKILL the process and wait for it: a crash, nothing flushed or handed over."""
        self.stop(signal.SIGKILL)

    def pause(self, timeout: float = 5.0) -> None:
        """SIGSTOP the process and wait until the kernel reports it stopped."""
        self._signal_and_wait(signal.SIGSTOP, stopped=True, timeout=timeout)
        self._paused = True

    def resume(self, timeout: float = 5.0) -> None:
        """SIGCONT a paused process and wait until the kernel reports it running."""
        self._signal_and_wait(signal.SIGCONT, stopped=False, timeout=timeout)
        self._paused = False

    def _signal_and_wait(self, sig: int, *, stopped: bool, timeout: float) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            raise HarnessError(f"{self.name} ({self.address}) is not running")
        process.send_signal(sig)
        # A signal is delivered asynchronously; /proc says when it took effect (where
        # there is no /proc, the process is taken at its word).
        deadline = time.monotonic() + timeout
        while True:
            state = process_state(process.pid)
            if state is None or (state == "T") == stopped:
                return
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"{self.name} ({self.address}) is still in state {state!r} "
                    f"{timeout:g} s after signal {sig}"
                )
            time.sleep(0.01)

    def close(self) -> None:
        """Close what was made through the node, kill the process, and remove a
        temporary data directory."""
        super().close()
        self.stop(signal.SIGKILL)
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.log_path.unlink(missing_ok=True)
