"""The ``compactify`` command: a thin click layer over the Python API.

Every command lives in its own module and is imported only when it runs (``COMMANDS``
maps its name to ``module:attribute``, ``SHORT_HELP`` to its line in ``compactify --help``), so
``compactify --help`` does not pay for torch. Errors from the API become one line on stderr and an exit code:
2 for bad input (click's own usage errors included), 1 for a failed verification or an internal
error (a bug, which says how to report it). ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import logging
import os
import signal
import sys
import threading

import click

from compactify import __version__
from compactify.errors import CompactifyError, first_line, one_line
from compactify.outputs import defer_interrupt


COMMANDS: dict[str, str] = {
    "bench": "compactify.cli.bench_cmd:bench",
    "convert": "compactify.cli.convert_cmd:convert",
    "demo": "compactify.cli.demo_cmd:demo",
    "engine": "compactify.cli.engine_cmd:engine",
    "expand": "compactify.cli.models_cmd:expand_cmd",
    "models": "compactify.cli.models_cmd:models",
    "sweep": "compactify.cli.sweep_cmd:sweep",
    "train": "compactify.cli.models_cmd:train_cmd",
    "verify": "compactify.cli.verify_cmd:verify",
}


class Interrupted:
    """SIGINT and SIGTERM become KeyboardInterrupt inside a command, so that every ``finally`` and
    ``except BaseException`` clean-up runs (a temporary output folder is removed), and the signal is
    remembered: torch sometimes turns a KeyboardInterrupt raised deep inside it into another error
    (``AssertionError: Trying to pop empty mode stack``), which must still be reported as the interrupt."""

    received: int | None = None

    @classmethod
    @contextlib.contextmanager
    def handled(cls):
        cls.received = None
        if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
            yield
            return
        previous = {}

        def handler(signum, frame):
            if cls.received is None:
                cls.received = signum
            if not defer_interrupt():
                raise KeyboardInterrupt

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    @classmethod
    def message(cls) -> tuple[str, int]:
        signum = cls.received or signal.SIGINT
        name = signal.Signals(signum).name
        return f"error: interrupted ({name})", 128 + signum


class _EchoHandler(logging.Handler):
    """Writes to the stderr of the moment (click's test runner swaps it between invocations)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


# Under --debug, what the libraries below said (torch's logs, kept from the terminal otherwise).
_DEBUG_HANDLER = _EchoHandler()


def _show_debug_logs(debug: bool) -> None:
    logger = logging.getLogger("compactify")
    if debug:
        logger.addHandler(_DEBUG_HANDLER)  # once: addHandler skips a handler already there
        logger.setLevel(logging.DEBUG)
    else:
        logger.removeHandler(_DEBUG_HANDLER)
        logger.setLevel(logging.NOTSET)


def _usage_line(exc: click.ClickException) -> str:
    message = one_line(exc.format_message()).replace(". (", " (").rstrip(".")
    message = message[:1].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "compactify"
    return f"error: {message} (see '{where} --help')"


# What `compactify --help` lists, without importing the commands (they import torch and ONNX, seconds
# before a word is printed); a test checks each line against the command's own help.
SHORT_HELP: dict[str, str] = {
    "bench": "Measure the latency of MODEL files, interleaved (A B, B A, ...);...",
    "convert": "Contract CHECKPOINT into its compact network.",
    "demo": "Train SmallNet-7 expanded with ExpandNets on the built-in...",
    "engine": "Build a serialized TensorRT engine from MODEL.onnx (needs...",
    "expand": "Write a freshly initialized expanded checkpoint of ARCH with its...",
    "models": "List the built-in architectures matching PATTERN (shell-style,...",
    "sweep": "Convert every (CKPT, rank budget, precision) point, measure its...",
    "train": "Train ARCH (optionally expanded) on the built-in digits data on...",
    "verify": "Check that the compact models in OUTDIR (from `compactify...",
}


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, SHORT_HELP[name]) for name in self.list_commands(ctx)])

    def get_command(self, ctx: click.Context, name: str):
        if name not in COMMANDS:
            return None
        module_name, attr = COMMANDS[name].split(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in COMMANDS:
            close = difflib.get_close_matches(name, list(COMMANDS), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise click.UsageError(f"no such command {name!r}; {hint}commands: {', '.join(sorted(COMMANDS))}", ctx)
        return super().resolve_command(ctx, args)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """click's own usage errors (a missing option, a value out of range, an unknown command) become
        one ``error:`` line and exit 2, like every other bad input; SIGINT/SIGTERM are handled."""
        with Interrupted.handled():
            try:
                code = super().main(args, prog_name or "compactify", complete_var, standalone_mode=False, **extra)
            except click.exceptions.NoArgsIsHelpError as exc:  # bare `compactify`: the help is the answer
                click.echo(exc.ctx.get_help())
                code = 0
            except click.ClickException as exc:
                click.echo(_usage_line(exc), err=True)
                code = exc.exit_code
            except (click.exceptions.Abort, KeyboardInterrupt):
                line, code = Interrupted.message()
                click.echo(line, err=True)
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BaseException as exc:
            debug = bool(ctx.obj and ctx.obj.get("debug"))
            if Interrupted.received is not None or isinstance(exc, KeyboardInterrupt):
                if debug and not isinstance(exc, KeyboardInterrupt):
                    raise
                line, code = Interrupted.message()
                click.echo(line, err=True)
                ctx.exit(code)
            if not isinstance(exc, Exception):
                raise
            if debug:
                raise
            if isinstance(exc, CompactifyError):
                click.echo(f"error: {one_line(exc)}", err=True)
                ctx.exit(exc.exit_code)
            # Not the user's doing: a bug in compactify (or a library under it). One line, and how to report it.
            click.echo(f"internal error: {type(exc).__name__}: {one_line(first_line(exc))} -- this is a bug in "
                       "compactify; please report it with the output of the same command run as "
                       "`compactify --debug ...`", err=True)
            ctx.exit(1)


@click.group(name="compactify", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="compactify")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Contract over-parameterized PyTorch checkpoints into compact networks, export and verify them."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    _show_debug_logs(debug)
    # As with `python -m`, users' own modules (--arch package.module:factory) import from here.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
