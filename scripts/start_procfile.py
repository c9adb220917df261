"""``honcho start`` with a stop grace long enough for the Procfile's processes to stop cleanly.

    python scripts/start_procfile.py [HONCHO START ARGS...]     # scripts/run.sh: -f Procfile

honcho sends SIGTERM on Ctrl-C and SIGKILL to whatever is left 5 s later (``honcho.manager.KILL_WAIT``, not an
option). An idle Celery worker needs 2-3 s to stop (its loop notices the signal within its 2 s broker poll,
then closes its pool and exits), and more on a busy machine: measured up to 8 s with the load at 9 on 2 cores,
so honcho killed workers that were stopping cleanly. Here honcho waits :data:`KILL_WAIT` seconds;
``scripts/run_process.py`` (which every Procfile line runs through) kills a process that has not stopped
:data:`run_process.DEFAULT_GRACE` seconds after the signal, before honcho's own SIGKILL would.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import honcho.manager  # noqa: E402
from honcho.command import main  # noqa: E402

from run_process import DEFAULT_GRACE  # noqa: E402

KILL_WAIT = DEFAULT_GRACE + 10  # honcho's last resort comes after run_process.py's

if __name__ == "__main__":
    honcho.manager.KILL_WAIT = KILL_WAIT
    sys.exit(main(["start", *sys.argv[1:]]))
