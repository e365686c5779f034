"""Process wiring shared by the services: start-up with config errors, HTTP serving, worker threads."""

from __future__ import annotations

import faulthandler
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import uvicorn

from otbus_core.exceptions import ConfigError
from otbus_core.logs import configure_logging
from otbus_core.ops import install_stop_signals
from otbus_core.settings import OtbusSettings, load_settings

__all__ = ["configure", "main_http", "run_worker", "start_worker"]

log = logging.getLogger(__name__)

S = TypeVar("S", bound=OtbusSettings)
T = TypeVar("T")


def configure(prog: str, settings_cls: type[S], build: Callable[[S], T]) -> tuple[S, T]:
    """Load settings, set up logging and build the service; invalid config exits 2 naming the key."""
    # `kill -USR1 <pid>` writes every thread's stack to stderr, also when the process is stuck
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        settings = load_settings(settings_cls)
        configure_logging(settings.service_name, settings.log_level, settings.log_json)
        sys.setswitchinterval(settings.switch_interval_ms / 1000)
        built = build(settings)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)  # noqa: T201
        raise SystemExit(2) from None
    if settings.gc_thresholds is not None:
        gc.set_threshold(*settings.gc_thresholds)
    if settings.gc_freeze:  # what start-up made lives as long as the process: out of the collector's walks
        gc.collect()
        gc.freeze()
    return settings, built


def main_http(
    prog: str,
    settings_cls: type[S],
    create_app: Callable[[S], Any],
    uvicorn_options: Callable[[S], dict[str, Any]] | None = None,
) -> int:
    """Configure, build the app and serve it (`uvicorn_options` adds server options from the settings)."""
    settings, app = configure(prog, settings_cls, create_app)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 30,
    }
    if uvicorn_options is not None:
        options.update(uvicorn_options(settings))
    uvicorn.run(app, **options)
    return 0


def start_worker(target: Callable[[], None], name: str) -> threading.Thread:
    """Run `target` in a thread; if it dies, log why and stop the whole process.

    A service whose consumer has died must not go on answering as if it were working:
    SIGTERM starts the normal graceful shutdown, and the supervisor restarts it.
    """

    def guarded() -> None:
        try:
            target()
        except BaseException:
            log.critical("%s died; stopping the process", name, exc_info=True)
            os.kill(os.getpid(), signal.SIGTERM)

    th = threading.Thread(target=guarded, name=name, daemon=True)
    th.start()
    return th


def run_worker(target: Callable[[], None], stop: Callable[[], None], name: str, grace: float = 90.0) -> int:
    """Run `target` in a worker thread until SIGTERM/SIGINT (or until it ends), then `stop()` it.

    The main thread only waits, so a signal is always handled at once, even while the
    worker sits in a long call into a C library. A worker that has not finished `grace`
    seconds after `stop()` is stuck: every thread's stack is logged. Returns the exit code:
    1 when the worker was stuck or died of an error (a supervisor should restart), else 0.
    """
    stopping = threading.Event()
    failed = threading.Event()

    def watched() -> None:
        try:
            target()
        except BaseException:
            failed.set()
            raise

    install_stop_signals(stopping.set)
    th = start_worker(watched, name)
    while not stopping.wait(1.0) and th.is_alive():
        pass
    stop()
    th.join(grace)
    if th.is_alive():
        log.error("%s did not stop within %.0fs after being asked to; thread stacks follow", name, grace)
        faulthandler.dump_traceback(all_threads=True)
        return 1
    return 1 if failed.is_set() else 0
