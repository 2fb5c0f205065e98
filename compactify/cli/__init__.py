"""The ``compactify`` command: a thin click layer over the Python API.

Every command lives in its own module and is imported only when it runs (``COMMANDS``
maps its name to ``module:attribute``), so ``compactify --help`` does not pay for torch. Errors from the API become one line on stderr and an exit code:
2 for bad input, 1 for anything else. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from compactify import __version__
from compactify.errors import CompactifyError


COMMANDS: dict[str, str] = {
    "bench": "compactify.cli.bench_cmd:bench",
    "convert": "compactify.cli.convert_cmd:convert",
    "demo": "compactify.cli.demo_cmd:demo",
    "engine": "compactify.cli.engine_cmd:engine",
    "expand": "compactify.cli.models_cmd:expand_cmd",
    "models": "compactify.cli.models_cmd:models",
    "train": "compactify.cli.models_cmd:train_cmd",
    "verify": "compactify.cli.verify_cmd:verify",
}


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str):
        if name not in COMMANDS:
            return None
        module_name, attr = COMMANDS[name].split(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except CompactifyError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # an internal failure: still one line unless asked
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="compactify")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Contract over-parameterized PyTorch checkpoints into compact networks, export and verify them."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    # As with `python -m`, users' own modules (--arch package.module:factory) import from here.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
