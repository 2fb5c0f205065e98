"""Training on digits: SmallNet-7 reaches the issue's 90% bar quickly, deterministically."""

from __future__ import annotations

import pytest
import torch

from compactify.errors import BadInputError
from compactify.models import create_model, model_entry
from compactify.models.data import load_digits_data
from compactify.models.train import evaluate, predict, train


@pytest.mark.slow
def test_smallnet7_trains_past_90_percent_on_digits():
    kwargs = model_entry("smallnet7").train_kwargs
    shape = model_entry("smallnet7").input_shape(**kwargs)
    torch.manual_seed(0)
    model = create_model("smallnet7", **kwargs)
    assert sum(p.numel() for p in model.parameters()) == 41_610  # 66,186 at 32x32; fc1 sees 2x2 here
    result = train(model, 3, input_shape=shape, progress=False, threads=1)
    assert result.test_accuracy >= 0.9 and result.train_accuracy >= 0.9
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert evaluate(model, input_shape=shape) == result.test_accuracy
    assert not model.training

    # same seeds, same run
    torch.manual_seed(0)
    again = create_model("smallnet7", **kwargs)
    train(again, 1, input_shape=shape, progress=False, threads=1)
    torch.manual_seed(0)
    third = create_model("smallnet7", **kwargs)
    train(third, 1, input_shape=shape, progress=False, threads=1)
    x = load_digits_data(shape).x_test
    assert torch.equal(predict(again, x), predict(third, x))


def test_bad_training_arguments():
    model = create_model("smallnet7", input_size=16)
    for epochs in (0, -1, 1.5):
        with pytest.raises(BadInputError, match="epochs"):
            train(model, epochs, input_shape=(1, 3, 16, 16))
    with pytest.raises(BadInputError, match="input_shape"):
        train(model, 1)
    with pytest.raises(BadInputError, match="optimizer"):
        train(model, 1, input_shape=(1, 3, 16, 16), optimizer="lbfgs", progress=False)
    with pytest.raises(BadInputError, match="threads"):
        train(model, 1, input_shape=(1, 3, 16, 16), threads=0)
