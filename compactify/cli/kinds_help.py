"""Commands whose help ends with the table of model files they take (``{kinds}`` in the docstring).

The table comes from the target registry, which imports torch and ONNX (3 s): it is built when the
help is shown, so that the command itself answers a wrong argument before it pays for them.
"""

from __future__ import annotations

import inspect

import click

PLACEHOLDER = "{kinds}"


class KindsHelpCommand(click.Command):
    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from compactify.harness.model_files import model_kinds_table

        written = self.help
        self.help = inspect.cleandoc(written or "").replace(PLACEHOLDER, model_kinds_table())
        try:
            super().format_help_text(ctx, formatter)
        finally:
            self.help = written
