"""interceptd: seccomp-notify container hardening daemon, runtime shim and CLI."""
