"""What ``--rank`` runs on: the checked rule, and the data its truncation is measured on (calibration
inputs for the output error; held-out labels, where known, for the accuracy it costs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from compactify.converter.frontends.fx.check import example_input
from compactify.converter.lowrank.rank_rules import RankRule, parse_rank_rule
from compactify.errors import BadInputError
from compactify.models.data import load_digits_data, trained_on_digits
from compactify.models.train import evaluate as accuracy_on
from compactify.models.train import predict
from compactify.targets.calibration import read_npz

CALIBRATION_SAMPLES = 128
CALIBRATION_SEED = 1234


@dataclass
class RankRequest:
    """What ``--rank`` asks for, with what the converter needs to measure the result."""

    rule: RankRule
    multiple: int = 1
    cost: str = "flops"
    calibration: torch.Tensor | None = None  # inputs on which the output error is measured
    calibration_source: str = "random"
    evaluate: Callable[[nn.Module], float] | None = None  # accuracy of a model, when known
    evaluate_on: str | None = None
    batch: int | None = None  # batch at which --cost latency times the layers
    prune: bool = True


def rank_request(settings, input_shape: Sequence[int], meta: dict) -> RankRequest:
    """What the truncation runs on, for ``settings`` (a checked ``pipeline.settings.RankSettings``) and a
    source of ``input_shape`` whose metadata ``meta`` says what it was trained on: the calibration
    inputs of the output error and, where labels are known, the accuracy to judge it by."""
    shape = tuple(int(s) for s in input_shape)
    on_digits = trained_on_digits(meta)
    request = RankRequest(parse_rank_rule(settings.rule), settings.multiple, settings.cost, batch=shape[0])
    data = None
    if on_digits or settings.calibration == "digits":
        data = load_digits_data(shape)
    if settings.calibration == "digits" or (settings.calibration is None and on_digits):
        request.calibration = data.x_train[:CALIBRATION_SAMPLES]
        request.calibration_source = f"{len(request.calibration)} digits training images"
    else:
        request.calibration = random_calibration(shape)
        request.calibration_source = f"{CALIBRATION_SAMPLES} seeded N(0,1) inputs"
    if settings.data is not None:
        request.evaluate, request.evaluate_on = held_out_accuracy(settings.data, shape)
    elif on_digits:
        request.evaluate = lambda model: accuracy_on(model, data)
        request.evaluate_on = f"digits test split ({len(data.y_test)} images)"
    if settings.max_accuracy_drop is not None and request.evaluate is None:
        raise BadInputError("--max-accuracy-drop needs held-out labels: a checkpoint trained on the built-in digits, "
                            "or --data FILE.npz with arrays x and labels")
    return request


def held_out_accuracy(path: str, shape: Sequence[int]) -> tuple[Callable[[nn.Module], float], str]:
    """The accuracy of a model on a --data file's inputs and labels, and what to call them."""
    x, labels, _ = read_npz(path, shape)
    if labels is None:
        raise BadInputError(f"--data {Path(path).name} has no 'labels' array: accuracy needs the true class of each "
                            "input (np.savez(FILE, x=INPUTS, labels=CLASSES))")
    inputs, truth = torch.from_numpy(x), torch.from_numpy(labels)

    def accuracy(model: nn.Module) -> float:
        return float((predict(model, inputs) == truth).float().mean())

    return accuracy, f"{Path(path).name} ({len(labels)} held-out inputs)"


def random_calibration(input_shape: Sequence[int], samples: int = CALIBRATION_SAMPLES) -> torch.Tensor:
    return example_input((samples, *input_shape[1:]), seed=CALIBRATION_SEED)
