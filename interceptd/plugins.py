"""The daemon's configured extensions: the built-in policy and `[handlers] modules`
(handler registration), and `[metrics] containers` (moved out of daemon.py)."""

from __future__ import annotations

from interceptd.config import Config, ConfigError
from interceptd.handlers import HandlerRegistry


def metrics_containers(cfg: Config) -> tuple[str, ...]:
    """`[metrics] containers`: the containers (id prefixes or names) that get their own
    label value; bounded so a metric's series count stays bounded."""
    from interceptd.metrics import MAX_LABELLED_CONTAINERS

    names = cfg.sections.get("metrics", {}).get("containers", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError("metrics.containers: must be a list of container ids or names")
    if len(names) > MAX_LABELLED_CONTAINERS:
        raise ConfigError(f"metrics.containers: at most {MAX_LABELLED_CONTAINERS}")
    return tuple(names)


def register_policy(handlers: HandlerRegistry, cfg: Config) -> None:
    from interceptd.handlers.table import register

    register(handlers, cfg)
    register_plugins(handlers, cfg)


def register_plugins(handlers: HandlerRegistry, cfg: Config) -> None:
    """`[handlers] modules = ["pkg.mod", ...]`: extra handler modules (site
    policy, tests), each with `register(handlers, cfg)`, loaded after the
    built-in policy so registering a syscall twice is a start-up error."""
    import importlib

    modules = cfg.sections.get("handlers", {}).get("modules", [])
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ConfigError("handlers.modules: must be a list of module names")
    for name in modules:
        try:
            importlib.import_module(name).register(handlers, cfg)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"handlers.modules: {name}: {e}") from e
