"""``python -m tests.support.fault_worker <celery arguments>``: the Celery command line, with the faults of the
environment (tests/support/faults.py) installed first, so the worker and its forked pool processes have them.

With ``PF_TEST_WORKER_TMP`` set, the pool's temporary folder (billiard's, through ``multiprocessing``) is that
folder instead of a fresh ``/tmp/pymp-*``: a test that kills its worker with SIGKILL leaves nothing in /tmp.
"""
from __future__ import annotations

import multiprocessing
import os
import sys

from tests.support.faults import install_from_env

WORKER_TMP_ENV = "PF_TEST_WORKER_TMP"

if __name__ == "__main__":
    install_from_env()
    if os.environ.get(WORKER_TMP_ENV):
        os.makedirs(os.environ[WORKER_TMP_ENV], exist_ok=True)
        # multiprocessing.util.get_temp_dir() reads the folder from here before it makes one
        multiprocessing.current_process()._config["tempdir"] = os.environ[WORKER_TMP_ENV]  # type: ignore[attr-defined]
    from celery.__main__ import main

    sys.argv[0] = "celery"
    sys.exit(main())
