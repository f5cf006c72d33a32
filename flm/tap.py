"""``twistd flm``: command-line options, wired to :class:`flm.service.FLMService`."""

from __future__ import annotations

import gc
from typing import Any

from twisted.python import usage

from flm.config import SettingsError, load_settings
from flm.startup import StartupError, exit_with, twistd_owner


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "TOML file with any setting of docs/configuration.md."],
        ["data-dir", "d", None, "Database and admin token [default: $FLM_DATA_DIR, "
                                "else ~/.local/share/flm]."],
        ["database", None, None, "sqlite:PATH or postgresql://USER@HOST:PORT/DB "
         "[default: sqlite:<data-dir>/flm.db]."],
        ["admin", "a", None, "Admin API endpoint [default: tcp:8420:interface=127.0.0.1]."],
        ["backend", "b", None, "Model server URL [default: http://127.0.0.1:11434]."],
        ["backend-kind", "k", None, "ollama or openai [default: ollama]."],
        ["backend-max-concurrent", "m", None, "Requests at the backend at once, across all "
                                              "APIs [default: 1 for ollama, 4 for openai]."],
        ["node-name", None, None, "This node's name among several [default: "
                                  "<hostname>:<admin port>]."],
    ]
    optFlags = [
        ["reuse-port", None, "Open API ports with SO_REUSEPORT: several FLM processes on "
                             "this machine share them (Linux)."],
    ]

    def parseOptions(self, options: Any = None) -> None:
        """Under twistd, a wrong option or setting is one line and exit status 1 (twistd would
        print its whole usage text before the reason)."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            exit_with(str(e))

    def postOptions(self) -> None:
        cli = {
            "data_dir": self["data-dir"], "database": self["database"], "admin": self["admin"],
            "backend": self["backend"],
            "backend_kind": self["backend-kind"],
            "backend_max_concurrent": _integer("backend-max-concurrent",
                                               self["backend-max-concurrent"]),
            "node_name": self["node-name"],
            "reuse_port": True if self["reuse-port"] else None,
        }
        try:
            self["settings"] = load_settings(cli, self["config"])
        except SettingsError as e:
            raise usage.UsageError(str(e)) from None


def _integer(option: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise usage.UsageError(f"--{option}: must be a whole number, got {value!r}") from None


def makeService(options: Options, reactor: Any = None) -> Any:
    if reactor is None:
        from twisted.internet import reactor
    from flm.service import build
    try:
        service = build(options["settings"], reactor, twistd_owner(options))
    except StartupError as e:
        exit_with(str(e))
    # Once the services have started (the turn after the startup hooks run).
    reactor.callWhenRunning(reactor.callLater, 0, freeze_long_lived)
    return service


def freeze_long_lived() -> None:
    """What is alive once FLM runs (modules, the app, the store, the sites) lives as long
    as the process: frozen out of the cycle collector's sight, so a full collection no
    longer walks it on the reactor thread (Synapse does the same at start). The youngest
    generation is collected every 7,000 allocations, not 700: a request's objects die by
    reference count, and each collection also walked every request in flight. Measured
    with ``bench.ab``, c=50: FLM/bare 0.90 -> 0.97 streaming (docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(7000, 10, 10)
