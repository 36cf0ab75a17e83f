"""The bus's own commands of the ``clusterbus`` command line (``settings``, ``dlq``,
``doctor``); the console script itself is :func:`plugins.cli.main`, which adds the demo and
the node."""

from __future__ import annotations

import argparse
import asyncio
from typing import TypeAlias

from pydantic import SecretStr, ValidationError

from bus import __version__, dlq, doctor
from bus.errors import BusError
from bus.logs import configure_logging
from bus.settings import Settings, redact_text, redact_url
from bus.terminal import Terminal

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
BUS_COMMANDS = ("settings", "dlq", "doctor")


def parser() -> tuple[argparse.ArgumentParser, Commands]:
    """The ``clusterbus`` parser with the bus's commands; more may be added to the second."""
    root = argparse.ArgumentParser(
        prog="clusterbus", description="clusterbus: one cluster out of many instances."
    )
    root.add_argument("--version", action="version", version=f"clusterbus {__version__}")
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("settings", help="show the effective settings (secrets redacted)")
    dlq.add_parser(commands)
    doctor.add_parser(commands)
    return root, commands


def settings_error(exc: ValidationError) -> str:
    """A settings validation error as lines naming each setting and its variable."""
    lines = [f"invalid settings ({exc.error_count()} error(s)):"]
    for error in exc.errors(include_url=False):
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        lines.append(f"  {name} (env CLUSTERBUS_{name.upper()}): {redact_text(error['msg'])}")
    return "\n".join(lines)


def failure(command: str, exc: Exception) -> str:
    """One line saying why ``command`` failed, URL passwords redacted (never a traceback)."""
    if isinstance(exc, ValidationError):
        detail = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        )
        text = f"invalid settings: {detail}"
    elif isinstance(exc, BusError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return redact_text(f"{command} failed: {text}".replace("\n", " "))


def load_settings(terminal: Terminal) -> Settings | None:
    """The settings from the environment, or None after printing what is wrong."""
    try:
        return Settings()
    except ValidationError as exc:
        terminal.print(settings_error(exc), style="red")
        return None


def run(args: argparse.Namespace, terminal: Terminal, settings: Settings) -> int:
    """Carry out one of :data:`BUS_COMMANDS`; the exit status."""
    if args.command == "settings":
        for name, value in settings.model_dump().items():
            shown = (  # the URLs: shown without their password
                redact_url(value.get_secret_value()) if isinstance(value, SecretStr) else value
            )
            terminal.print(f"{name} = {shown}")
        return 0
    configure_logging(format="console", level="WARNING")
    try:
        if args.command == "doctor":
            return doctor.run(terminal, args, settings)
        return asyncio.run(dlq.run(terminal, args, settings))
    except KeyboardInterrupt:  # Ctrl-C (at purge's question, say): nothing more is done
        terminal.print(f"{args.command}: interrupted", style="red")
        return 130
    except Exception as exc:  # a command line reports in one line, it does not trace back
        terminal.print(failure(args.command, exc), style="red")
        return 2 if isinstance(exc, ValidationError) else 1
