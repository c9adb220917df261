"""The bottom layer of the service: configuration, the database (extensions, tables, migrations), errors,
image storage, the task queue's set-up (and the embedded broker) and wake-ups between processes.

It imports nothing else of ``app/`` and no model code; the service layer, the interfaces (web, api, admin)
and the workers all build on it. See docs/architecture.md.
"""
