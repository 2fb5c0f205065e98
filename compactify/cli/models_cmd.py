"""``compactify models``, ``compactify expand`` and ``compactify train``: the model zoo on the
command line, thin over ``compactify.models``."""

from __future__ import annotations

import re

from pathlib import Path

import click

from compactify.arguments import parse_arch_kwargs
from compactify.errors import BadInputError

# `train --nuclear` with no value. Measured on digits with the default AdamW at --lr 0.002: on widevgg
# (2 epochs) tau 3 keeps 99.2% accuracy and 98.3% at --rank flops:0.3 (tau 1: 64.7%; tau 10 costs the
# untruncated net 6 points); on SmallNet-7 (3 epochs) tau 3 keeps 98.1% untruncated but loses most of it
# at flops:0.5, where tau 5 keeps 94.7% of 96.9% and tau 10 does not train (45%).
NUCLEAR_DEFAULT = 3.0


def _layers(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise BadInputError("--layers is empty; give comma-separated module names or patterns")
    return names


def _resolve(arch: str, mode: str | None):
    """(base name, mode or None) from ARCH and --expand/--mode, which may not disagree."""
    from compactify.models import normalize_mode, split_name

    base, name_mode = split_name(arch)
    if mode is not None:
        mode = normalize_mode(mode)
        if name_mode is not None and name_mode != mode:
            raise BadInputError(f"{arch!r} already names mode {name_mode}; it conflicts with mode {mode}")
    return base, mode or name_mode


def _check_output(output: Path, force: bool) -> None:
    if output.exists() and not force:
        raise BadInputError(f"output file {output} already exists; pass --force to overwrite it")


def _check_rate(rate: int) -> None:
    if rate < 1:
        raise BadInputError(f"--rate must be >= 1, got {rate}")


def _count_flops(model, shape) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(shape, device="meta"))
    return int(counter.get_total_flops())


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


@click.command("models")
@click.argument("pattern", required=False, default="*")
@click.option("--expanded", is_flag=True,
              help="Also list the expanded variants (BASE-MODE) that apply; a PATTERN with a '-' lists them too.")
def models(pattern: str, expanded: bool) -> None:
    """List the built-in architectures matching PATTERN (shell-style, default all).

    Each also has expanded variants, named BASE-MODE (smallnet7-ck+fc): MODE is fc, cl, ck, cl+fc
    or ck+fc, where the model has such layers. --expanded lists them, and so does a PATTERN with
    a '-' (repvgg-cl, 'smallnet7-*').

    Parameters and FLOPs (torch.utils.flop_counter, batch 1) are for the default input shape;
    models are built on the meta device, so no weights are allocated.
    """
    import torch
    from rich.console import Console

    from compactify.harness.report import Column, print_table
    from compactify.models import MODES, create_model, list_models, model_entry

    names = list_models(pattern, expanded=expanded)
    if not names:
        raise BadInputError(f"no model matches {pattern!r}; `compactify models` lists them all")
    rows = []
    for name in names:
        entry = model_entry(name)
        shape = entry.default_input_shape
        with torch.device("meta"):
            model = create_model(name)
        params = sum(p.numel() for p in model.parameters())
        flops = _count_flops(model, shape)
        desc = entry.description if name == entry.name else f"{entry.name}, ExpandNets-{name[len(entry.name) + 1:].upper()} rate 4"
        rows.append({"name": name, "params": params, "flops": _human(flops), "shape": "x".join(map(str, shape)),
                     "description": desc})
    columns = [Column("name"), Column("params", fmt=",d"), Column("flops", "FLOPs", align="right"),
               Column("shape", "input shape", align="right"), Column("description")]
    console = Console()
    print_table(console, rows, columns, title="compactify models")  # the terminal's width, never wider
    if not any("-" in name for name in names):  # the expanded names are not listed: say how to form them
        console.print(f"expanded variants: NAME-MODE with MODE {', '.join(MODES)} where the model has such layers "
                      "(smallnet7-ck+fc); `compactify models --expanded` or a pattern with a '-' "
                      "('smallnet7-*') lists them", highlight=False)


@click.command("expand")
@click.argument("arch")
@click.option("--mode", help="fc, cl, ck, cl+fc or ck+fc (or give ARCH as BASE-MODE).")
@click.option("--rate", type=int, default=4, show_default=True, help="Expansion rate r.")
@click.option("--layers", help="Comma-separated module names or patterns to expand (default: all that apply).")
@click.option("--arch-kwargs", help='JSON object of architecture arguments, e.g. \'{"input_size": 16}\'.')
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random initialization.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write (.pt or .safetensors).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def expand_cmd(arch: str, mode: str | None, rate: int, layers: str | None, arch_kwargs: str | None, seed: int,
               output: Path, force: bool) -> None:
    """Write a freshly initialized expanded checkpoint of ARCH with its metadata.

    `compactify convert FILE -o OUT` then needs no --arch.
    """
    _check_rate(rate)
    kwargs = parse_arch_kwargs(arch_kwargs)
    layer_list = _layers(layers)
    _check_output(output, force)

    import torch

    from compactify.converter.load.checkpoint import save_checkpoint
    from compactify.models import create_model, expand, model_entry
    from compactify.models.metadata import CheckpointMeta

    base, mode = _resolve(arch, mode)
    if mode is None:
        raise BadInputError("give --mode (fc, cl, ck, cl+fc or ck+fc) or an expanded name such as smallnet7-cl")
    torch.manual_seed(seed)
    model = expand(create_model(base, **kwargs), mode, rate=rate, layers=layer_list)
    shape = list(model_entry(base).input_shape(**kwargs))
    meta = CheckpointMeta(arch=base, arch_kwargs=kwargs, expand=mode, rate=rate, layers=layer_list, aux=None,
                          input_shape=shape, expanded_layers=model.compactify_expansion["layers"], seed=seed,
                          given=("arch", "arch_kwargs", "expand", "rate", "layers", "aux", "input_shape",
                                 "expanded_layers", "seed"))
    save_checkpoint(output, model.state_dict(), meta, force=force)
    meta = meta.to_dict()
    n = sum(p.numel() for p in model.parameters())
    click.echo(f"{base}-{mode} (rate {rate}): {len(meta['expanded_layers'])} layers expanded, "
               f"{n:,} parameters, input {'x'.join(map(str, shape))} -> {output}")


_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$", re.IGNORECASE)


class _TrainCommand(click.Command):
    """``--nuclear -1`` is refused as a negative strength: --nuclear takes an optional value, so click
    reads a following token that starts with '-' (even in ``--nuclear=-1``) as an option of its own
    and would answer "no such option '-1'"."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for i, arg in enumerate(args):
            given = arg.partition("=")[2] if arg.startswith("--nuclear=") else \
                (args[i + 1] if arg == "--nuclear" and i + 1 < len(args) else "")
            if _NEGATIVE_NUMBER.match(given):
                raise BadInputError(f"--nuclear must be >= 0, got {float(given):g}")
        return super().parse_args(ctx, args)


@click.command("train", cls=_TrainCommand)
@click.argument("arch")
@click.option("--expand", "mode", help="Train the ExpandNets expansion: fc, cl, ck, cl+fc or ck+fc.")
@click.option("--rate", type=int, default=4, show_default=True, help="Expansion rate r.")
@click.option("--layers", help="Comma-separated module names or patterns to expand (default: all that apply).")
@click.option("--arch-kwargs", help="JSON object of architecture arguments (num_classes is 10 for digits).")
@click.option("--input-size", type=int, help="Square input size (default: the model's training default).")
@click.option("--nuclear", type=float, default=0.0, is_flag=False, flag_value=NUCLEAR_DEFAULT, metavar="[TAU]",
              help="Nuclear-norm strength tau (compression-aware training): after every step each layer's singular "
                   "values shrink by lr x tau (lr follows the one-cycle schedule up to --lr), so its scale is tied to "
                   f"--lr: at the default --lr 0.002, tau 1 to 5; --nuclear alone means {NUCLEAR_DEFAULT:g} (on "
                   "widevgg, 2 epochs: 99.2% accurate, 98.3% at --rank flops:0.3 where the plain net falls to 37%); "
                   "tau 0.001 changes nothing.")
@click.option("--nuclear-kind", type=click.Choice(["channel", "spatial"]), default="channel", show_default=True,
              help="Matrix view whose rank the nuclear norm lowers.")
@click.option("--group-lasso", type=float, default=0.0, help="Sparse group lasso strength lambda (groups = units).")
@click.option("--penalty", is_flag=True, help="Add the regularizers to the loss instead of proximal steps.")
@click.option("--reg-layers", help="Comma-separated module names or patterns to regularize (default: all).")
@click.option("--aux", is_flag=True, help="Train with auxiliary heads and an auxiliary branch (dropped at conversion).")
@click.option("--epochs", type=int, default=3, show_default=True, help="Training epochs.")
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Peak learning rate (one-cycle AdamW).")
@click.option("--weight-decay", type=float, default=1e-4, show_default=True,
              help="AdamW weight decay of the weights (not of BatchNorm or biases).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True,
              help="CPU threads. These nets are small: one thread avoids OpenMP stalls, which on a busy "
                   "machine made two threads several times slower.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write (.pt or .safetensors).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def train_cmd(arch: str, mode: str | None, rate: int, layers: str | None, arch_kwargs: str | None,
              input_size: int | None, nuclear: float, nuclear_kind: str, group_lasso: float, penalty: bool,
              reg_layers: str | None, aux: bool, epochs: int, lr: float, weight_decay: float, batch_size: int,
              seed: int, threads: int,
              quiet: bool, output: Path, force: bool) -> None:
    """Train ARCH (optionally expanded) on the built-in digits data on the CPU and save a
    checkpoint whose metadata lets `compactify convert` rebuild it."""
    _check_rate(rate)
    if epochs <= 0:
        raise BadInputError(f"--epochs must be a positive integer, got {epochs}")
    for option, value in (("--nuclear", nuclear), ("--group-lasso", group_lasso), ("--weight-decay", weight_decay)):
        if value < 0:
            raise BadInputError(f"{option} must be >= 0, got {value:g}")
    if threads < 1:
        raise BadInputError(f"--threads must be >= 1, got {threads}")
    if lr <= 0 or batch_size < 1:
        raise BadInputError(f"--lr must be > 0 and --batch-size >= 1, got {lr} and {batch_size}")
    if input_size is not None and input_size < 1:
        raise BadInputError(f"--input-size must be positive, got {input_size}")
    given_kwargs = parse_arch_kwargs(arch_kwargs)
    layer_list = _layers(layers)
    regularized = _layers(reg_layers)
    _check_output(output, force)

    import torch

    from compactify.converter.load.checkpoint import save_checkpoint
    from compactify.models import attach_auxiliary, create_model, expand, model_entry
    from compactify.models.data import NUM_CLASSES, load_digits_data
    from compactify.models.metadata import CheckpointMeta
    from compactify.models.train import train

    base, mode = _resolve(arch, mode)
    entry = model_entry(base)
    kwargs = {**entry.train_kwargs, **given_kwargs}
    if input_size is not None:
        kwargs["input_size"] = input_size
    if int(kwargs.get("num_classes", NUM_CLASSES)) != NUM_CLASSES:
        raise BadInputError(f"digits has {NUM_CLASSES} classes; drop num_classes from --arch-kwargs")

    torch.manual_seed(seed)
    model = create_model(base, **kwargs)
    if mode:
        model = expand(model, mode, rate=rate, layers=layer_list)
    shape = list(entry.input_shape(**kwargs))
    if aux:
        attach_auxiliary(model, heads="auto", branch="auto", input_shape=shape)
    data = load_digits_data(shape, seed=0)
    result = train(model, epochs, data=data, lr=lr, weight_decay=weight_decay, batch_size=batch_size, seed=seed,
                   nuclear=nuclear,
                   nuclear_kind=nuclear_kind, group_lasso=group_lasso, proximal=not penalty,
                   reg_layers=regularized, threads=threads, progress=not quiet)
    meta = {
        "arch": base,
        "arch_kwargs": kwargs,
        "expand": mode,
        "rate": rate if mode else None,
        "layers": layer_list if mode else None,
        "aux": model.auxiliary.config if aux else None,
        "input_shape": shape,
        "training": {  # checked against compactify.models.metadata.CheckpointMeta when saved
            "dataset": "digits",
            "epochs": epochs,
            "test_accuracy": result.test_accuracy,
            "train_accuracy": result.train_accuracy,
            "final_loss": result.final_loss,
            "seconds": round(result.seconds, 2),
            "input_shape": shape,
            "seed": seed,
            "lr": lr,
            "weight_decay": weight_decay,
            "batch_size": batch_size,
            "threads": threads,
            "optimizer": "adamw-onecycle",
            "nuclear": nuclear,
            "nuclear_kind": nuclear_kind,
            "group_lasso": group_lasso,
            "regularizer_form": "penalty" if penalty else "proximal",
            "reg_layers": regularized,
            "history": result.history,
        },
    }
    if mode:
        meta["expanded_layers"] = model.compactify_expansion["layers"]
    save_checkpoint(output, model.state_dict(), CheckpointMeta.from_dict(meta, where="the trained checkpoint"),
                    force=force)
    name = f"{base}-{mode}" if mode else base
    click.echo(f"{name}: test accuracy {result.test_accuracy:.4f} on digits after {epochs} epochs "
               f"({result.seconds:.1f} s, input {'x'.join(map(str, shape))}) -> {output}")
