"""One module per job of interceptd-runc's commands.

Each job is prepare() -> the real runtime's arguments (after argv[0]), then, for a
job that outlives the runtime, finish(rc) -> the exit status. main.py's command
table and the daemon's prepare service (service.py) both drive these.
"""
