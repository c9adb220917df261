"""``python -m tests.support.fault_worker <celery arguments>``: the Celery command line, with the faults of the
environment (tests/support/faults.py) installed first, so the worker and its forked pool processes have them."""
from __future__ import annotations

import sys

from tests.support.faults import install_from_env

if __name__ == "__main__":
    install_from_env()
    from celery.__main__ import main

    sys.argv[0] = "celery"
    sys.exit(main())
