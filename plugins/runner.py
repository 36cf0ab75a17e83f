"""The runner: ``clusterbus run module:attr`` runs an application's :class:`App` as a service.

It configures logging, imports the target (an ``App``, or a zero-argument factory returning
one, sync or async, called inside the running event loop), starts the app, runs until SIGTERM
or SIGINT, then stops it gracefully (:meth:`App.stop`: deliveries stop, in-flight handlers
finish within ``stop_timeout``, the ``before_stop`` hooks run, the bus closes) and exits 0.
A second signal while stopping exits at once (130 after SIGINT, 143 after SIGTERM).

Exit statuses: 0 stopped gracefully; 1 the app failed to build, start or stop (one line
saying why, from :func:`bus.cli.failure`; the traceback too at log level DEBUG); 2 the target
cannot be used (one line) or ``--http-port`` without uvicorn; 130/143 forced by a second
signal. With ``http_port``, :mod:`plugins.runner_http` serves ``/health/live``,
``/health/ready`` and ``/metrics`` from before the app starts until after it stopped.

``clusterbus node`` is this runner applied to the demo's app (:mod:`plugins.demo.node`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import TextIO

from pydantic import ValidationError

from bus import Bus
from bus.cli import failure
from bus.logs import LogFormat, configure_logging, get_logger
from bus.settings import redact_text
from bus.terminal import Terminal
from plugins.app import App
from plugins.runner_http import UVICORN_MISSING, endpoints, http_server, uvicorn_available

AppFactory = Callable[[], App | Awaitable[App]]
AppSource = App | AppFactory
"""What the runner runs: an App, or a zero-argument factory (sync or async) returning one."""
OnReady = Callable[[App, int | None], None]
"""Called once the app started, with the app and the HTTP port (None without HTTP)."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _failed(exc: Exception) -> int:
    """The exit status of a failure to build or start: invalid settings are a usage error
    (2, as for every command), anything else 1."""
    return EXIT_USAGE if isinstance(exc, ValidationError) else EXIT_FAILED


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

log = get_logger("clusterbus.runner")


class TargetError(Exception):
    """The target cannot be run; the message is the one line to print (exit status 2)."""


def load_target(target: str) -> AppSource:
    """The App or factory ``target`` (``module:attr``, ``attr`` possibly dotted) names.

    The current directory goes first on ``sys.path`` (as uvicorn and celery do), so
    ``examples.app_of_plugins:app`` works from the repository root.

    Raises:
        TargetError: the target is malformed, its module cannot be imported, the attribute
            is missing, or it is neither an App nor a zero-argument callable.
    """
    module_name, _, attribute = target.partition(":")
    parts = attribute.split(".")
    if not all(p.isidentifier() for p in (*module_name.split("."), *parts)):
        raise TargetError(f"TARGET must look like module:attribute, got {target!r}")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        found: object = importlib.import_module(module_name)
    except (ImportError, SyntaxError) as exc:
        raise TargetError(
            f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    for part in parts:
        try:
            found = getattr(found, part)
        except AttributeError:
            raise TargetError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if isinstance(found, App) or (callable(found) and _takes_no_argument(found)):
        return found  # a factory's result is checked when it is called
    raise TargetError(
        f"{target!r} is a {type(found).__name__}, not an App or a zero-argument factory "
        "returning one"
    )


def _takes_no_argument(function: Callable[..., object]) -> bool:
    if isinstance(function, type):
        return False  # a class builds something else than an App (App itself needs a name)
    try:
        inspect.signature(function).bind()
    except TypeError:
        return False
    except ValueError:  # no signature to look at (some builtins): let the call tell
        return True
    return True


async def build(source: AppSource, target: str) -> App:
    """The App of ``source``: itself, or what its factory returns (awaited when async).

    Raises:
        TargetError: the factory returned something else than an App.
    """
    if isinstance(source, App):
        return source
    made = source()
    if inspect.isawaitable(made):
        made = await made
    if not isinstance(made, App):
        raise TargetError(f"{target!r} returned a {type(made).__name__}, not an App")
    return made


def run(
    source: AppSource | str,
    *,
    command: str = "run",
    log_format: LogFormat = "auto",
    log_level: str = "INFO",
    log_file: TextIO | None = None,
    http_port: int | None = None,
    http_host: str = "127.0.0.1",
    on_ready: OnReady | None = None,
    terminal: Terminal | None = None,
) -> int:
    """Run ``source`` (an App, a factory, or a ``module:attr`` target) until SIGTERM or
    SIGINT; the exit status (see the module's docstring). Failure lines start with
    ``command`` and go to ``terminal`` (standard output by default)."""
    terminal = terminal or Terminal()
    debug = log_level.upper() == "DEBUG"
    configure_logging(format=log_format, level=log_level.upper(), file=log_file)
    if http_port is not None and not uvicorn_available():
        terminal.print(f"{command}: {UVICORN_MISSING}", style="red")
        return EXIT_USAGE
    target = source if isinstance(source, str) else command
    try:
        loaded = load_target(source) if isinstance(source, str) else source
    except TargetError as exc:
        _explain(terminal, f"{command}: {exc}", exc.__cause__ if debug else None)
        return EXIT_USAGE
    except Exception as exc:  # the module raised while building its app (bad settings ...)
        _explain(terminal, failure(command, exc), exc if debug else None)
        return _failed(exc)
    runner = _Runner(loaded, target, command, terminal, debug)
    return asyncio.run(runner.main(http_port, http_host, on_ready))


def _explain(terminal: Terminal, line: str, exc: BaseException | None) -> None:
    """Print ``line`` (and, given ``exc``, its traceback on standard error, redacted)."""
    if exc is not None:
        text = "".join(traceback.format_exception(exc))
        print(redact_text(text).rstrip(), file=sys.stderr, flush=True)
    terminal.print(redact_text(line), style="red")


class _Runner:
    """One run: the app, the signals received, the exit status."""

    def __init__(
        self, source: AppSource, target: str, command: str, terminal: Terminal, debug: bool
    ) -> None:
        self.source = source
        self.target = target
        self.command = command
        self.terminal = terminal
        self.debug = debug
        self.app: App | None = None
        self.stop = asyncio.Event()
        self.signal: signal.Signals | None = None

    def current_bus(self) -> Bus | None:
        return self.app.bus if self.app is not None else None

    def _on_signal(self, signum: signal.Signals) -> None:
        if self.signal is None:
            self.signal = signum
            self.stop.set()
            return
        with contextlib.suppress(Exception):  # best effort: exit now whatever happens
            log.warning("runner.forced_exit", signal=signum.name)
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(128 + signum.value)

    async def main(self, http_port: int | None, http_host: str, on_ready: OnReady | None) -> int:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for signum in signals:
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            async with contextlib.AsyncExitStack() as running:
                port: int | None = None
                try:
                    if http_port is not None:
                        port = await running.enter_async_context(
                            http_server(endpoints(self.current_bus), http_host, http_port)
                        )
                        where = f"[{http_host}]" if ":" in http_host else http_host
                        log.info("runner.http", url=f"http://{where}:{port}/health/ready")
                    self.app = await build(self.source, self.target)
                    log.info("runner.starting", target=self.target, app=self.app.name)
                    await self.app.start()  # stops what it started when it fails
                except TargetError as exc:
                    _explain(self.terminal, f"{self.command}: {exc}", None)
                    return EXIT_USAGE
                except Exception as exc:  # a command line reports in one line
                    line = failure(self.command, exc)
                    _explain(self.terminal, line, exc if self.debug else None)
                    return _failed(exc)
                return await self._serve(port, on_ready)
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)

    async def _serve(self, port: int | None, on_ready: OnReady | None) -> int:
        app = self.app
        assert app is not None
        log.info("runner.started", app=app.name, instance=app.bus.instance_id, mode=app.bus.mode)
        if on_ready is not None:
            on_ready(app, port)
        await self.stop.wait()
        name = self.signal.name if self.signal is not None else "?"
        log.info("runner.stopping", signal=name, stop_timeout=app.bus.settings.stop_timeout)
        try:
            await app.stop()
        except Exception as exc:  # the bus closed anyway; say what went wrong
            _explain(self.terminal, failure(self.command, exc), exc if self.debug else None)
            return EXIT_FAILED
        log.info("runner.stopped", app=app.name)
        return EXIT_OK
