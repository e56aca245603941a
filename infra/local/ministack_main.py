"""MiniStack for the local runtime: started by infra/local/emulator.py, stopped with it.

Run by .venv-ministack's interpreter (MiniStack pins its own botocore), so it
imports nothing from this project. It runs MiniStack's own entry point with one
addition: when the process that started it is gone (a runtime killed with
SIGKILL, a crashed test run), it sends itself SIGTERM, which MiniStack takes as
a graceful shutdown that also saves its state. So an emulator is never left
running behind the runtime that owns it.
"""

import os
import signal
import sys
import threading
import time


def _stop_when_orphaned(parent: int, interval_s: float = 0.5) -> None:
    while os.getppid() == parent:
        time.sleep(interval_s)
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    """Watch the parent, then hand over to MiniStack (its settings come from the environment)."""
    threading.Thread(target=_stop_when_orphaned, args=(os.getppid(),), name="orphan-watch", daemon=True).start()
    del sys.argv[1:]  # MiniStack parses its own flags (--detach, --stop): we pass none
    from ministack.app import main as ministack_main

    ministack_main()


if __name__ == "__main__":
    main()
