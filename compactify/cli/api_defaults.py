"""Option defaults that live in the API (a tolerance, the timing rounds), whose modules import torch.

The option's default is None, so that parsing the command line imports nothing heavy; its help shows
the value (``show_default``), which a test checks against the API's own; ``resolve`` puts the API's
value in once the command has checked its arguments and imported the API.
"""

from __future__ import annotations

import importlib
from typing import Any

import click


class ApiDefault(click.Option):
    """``--opt`` whose default is ``api`` ("package.module:NAME"), shown in the help as ``show_default``."""

    def __init__(self, *args, api: str, **kwargs):
        super().__init__(*args, default=None, **kwargs)
        self.api = api

    def get_help_extra(self, ctx: click.Context):
        extra = super().get_help_extra(ctx)
        extra["default"] = str(self.show_default)  # a value, not click's "(description)" of a string
        return extra

    def api_value(self) -> Any:
        module, _, name = self.api.partition(":")
        return getattr(importlib.import_module(module), name)


def resolve(ctx: click.Context, **given: Any) -> dict[str, Any]:
    """``given`` (parameter name -> the value parsed, None when the option was not given) with each
    None of an ``ApiDefault`` option replaced by the API's value."""
    options = {p.name: p for p in ctx.command.params if isinstance(p, ApiDefault)}
    return {name: options[name].api_value() if value is None and name in options else value
            for name, value in given.items()}
