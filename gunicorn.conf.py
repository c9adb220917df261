"""gunicorn's settings for the web process (gunicorn reads ``./gunicorn.conf.py`` from the folder it starts in:
the Procfile, ``priorforge serve`` and the benchmarks run from the repository root). Command-line flags win.

Deploying new code without dropping a request (docs/service.md, "Zero-downtime restarts"): ``kill -HUP
<master pid>``. The master keeps the listening socket, starts new workers (which import the new code) and
stops the old ones gracefully: they stop accepting, answer what they hold, and exit. A connection made
meanwhile waits in the socket's backlog for a new worker; none is refused.
"""

# an old worker finishes its requests before it exits, also a ?wait= request (JOB_WAIT_MAX_SECONDS, 60 s)
graceful_timeout = 75
# gunicorn >= 25 opens a control socket at one fixed path per user ($XDG_RUNTIME_DIR or ~/.gunicorn), so two
# instances on one machine took each other's; nothing here uses it (deploys use signals): off
control_socket_disable = True
