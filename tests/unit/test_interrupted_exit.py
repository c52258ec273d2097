"""An interrupted run ends with exit 130 even when a thread it leaves behind would never finish.

A SIGTERM or Ctrl-C is an exception raised wherever the main thread is; `make chaos` caught one
landing inside ThreadPoolExecutor's bookkeeping (a worker started, not yet registered for shutdown),
after which interpreter shutdown waited for that idle worker forever and migsafe never exited.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = textwrap.dedent(
    """
    import threading
    from migsafe import cli, dsn

    def interrupted(argv):
        # a non-daemon thread that never ends, as the interrupted executor leaves one
        threading.Thread(target=threading.Event().wait, name="stray").start()
        # and a password file written for a tool, as every run that starts pg_dump has one
        print(dsn._service_file((("password", "s3cret"),)), flush=True)
        return 130

    cli.run = interrupted
    cli.main([])
    """
)


def test_an_interrupted_run_exits_130_without_waiting_for_stray_threads_and_removes_its_secrets() -> None:
    # Given a run that was interrupted and left a thread behind that never finishes
    # When migsafe's entry point ends it
    done = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True, text=True, timeout=20,
                          env={"PYTHONPATH": str(ROOT / "functions")})
    # Then it exits 130 at once (a hang would end in TimeoutExpired), and no password file is left
    assert done.returncode == 130, done.stderr
    secret = Path(done.stdout.strip())
    assert secret.name.endswith(".conf")
    assert not secret.exists() and not secret.parent.exists()
