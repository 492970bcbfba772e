"""Tests for magnitude pruning and the gradual sparsity schedule."""

from __future__ import annotations

import doctest
import importlib
import itertools

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune

from stamen.compression import (
    PruningConfig,
    PruningMethod,
    QATConfig,
    SparsitySchedule,
    apply_masks,
    compute_masks,
    measure_sparsity,
    prepare_qat,
    remove_masks,
)
from stamen.compression.pruning import prunable_parameters
from stamen.core.errors import ConfigError
from stamen.models import ModelSpec, build_model, exchanged_state

LENET = ModelSpec("lenet", (1, 28, 28), num_classes=10)


def _train(model: nn.Module, steps: int, seed: int = 0) -> None:
    """A few SGD steps with momentum and weight decay, which would move unmasked zeros."""
    generator = torch.Generator().manual_seed(seed)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    model.train()
    for _ in range(steps):
        x = torch.randn((20, first_conv.in_channels, 28, 28), generator=generator)
        y = torch.randint(0, 10, (20,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def _weights(model: nn.Module) -> dict[str, np.ndarray]:
    names = [name for name, _ in prunable_parameters(model)]
    state = exchanged_state(model)
    return {name: state[name] for name in names}


@pytest.mark.parametrize("target", [0.3, 0.6, 0.9])
def test_global_pruning_reaches_the_target_across_all_prunable_weights(target: float) -> None:
    model = build_model(LENET, seed=0)
    apply_masks(model, compute_masks(model, target, PruningMethod.GLOBAL))
    assert measure_sparsity(model) == pytest.approx(target, abs=0.01)
    per_layer = [float((w == 0).mean()) for w in _weights(model).values()]
    assert max(per_layer) - min(per_layer) > 0.05  # global ranking prunes layers unevenly


@pytest.mark.parametrize("target", [0.3, 0.6, 0.9])
def test_layer_pruning_reaches_the_target_in_every_layer(target: float) -> None:
    model = build_model(LENET, seed=0)
    apply_masks(model, compute_masks(model, target, "layer"))
    for name, weight in _weights(model).items():
        assert float((weight == 0).mean()) == pytest.approx(target, abs=0.01), name


def test_structured_pruning_removes_whole_output_channels() -> None:
    model = build_model(ModelSpec("mobilenet", (1, 8, 8), num_classes=10), seed=0)
    masks = compute_masks(model, 0.5, PruningMethod.STRUCTURED)
    apply_masks(model, masks)
    for name, weight in _weights(model).items():
        channels = weight.reshape(weight.shape[0], -1)
        dead = (channels == 0).all(axis=1)
        assert dead.mean() == pytest.approx(0.5, abs=0.5 / weight.shape[0] + 1e-9), name
        # Every other channel is untouched: structured pruning leaves no scattered zeros.
        assert (channels[~dead] != 0).all(), name
        assert masks[name].reshape(weight.shape[0], -1).all(axis=1).tolist() == (~dead).tolist()


def test_compute_masks_leaves_the_model_unchanged() -> None:
    model = build_model(LENET, seed=0)
    before = exchanged_state(model)
    masks = compute_masks(model, 0.5, "global")
    assert not prune.is_pruned(model)
    assert not any(key.endswith(("_orig", "_mask")) for key in model.state_dict())
    after = exchanged_state(model)
    assert all(np.array_equal(before[key], after[key]) for key in before)
    assert set(masks) == {"conv1.weight", "conv2.weight", "fc1.weight"}
    assert all(mask.dtype == np.bool_ for mask in masks.values())


def test_pruned_weights_stay_zero_while_the_rest_trains() -> None:
    model = build_model(LENET, seed=0)
    masks = compute_masks(model, 0.7, "global")
    apply_masks(model, masks)
    before = _weights(model)
    _train(model, steps=5)
    after = _weights(model)
    for name, mask in masks.items():
        assert (after[name][~mask] == 0).all(), name
        assert (after[name][mask] != before[name][mask]).mean() > 0.9, name
    assert measure_sparsity(model) == pytest.approx(0.7, abs=0.01)


def test_masks_only_lose_entries_along_the_schedule() -> None:
    schedule = SparsitySchedule(PruningConfig(0.9, ramp_rounds=4, start_round=2))
    model = build_model(LENET, seed=0)
    previous: dict[str, np.ndarray] | None = None
    reached = []
    for round_num in range(1, 8):
        masks = compute_masks(model, schedule.sparsity_at(round_num), "global")
        if previous is not None:
            for name, mask in masks.items():
                assert not (mask & ~previous[name]).any(), (round_num, name)
        apply_masks(model, masks)  # replaces the previous round's masks, does not stack
        _train(model, steps=2, seed=round_num)
        reached.append(measure_sparsity(model))
        previous = masks
    assert reached[0] == 0.0
    assert reached[-1] == pytest.approx(0.9, abs=0.01)
    assert reached == sorted(reached)


def test_schedule_is_zero_before_the_start_and_the_target_after_the_ramp() -> None:
    config = PruningConfig(target_sparsity=0.8, ramp_rounds=10, start_round=3)
    schedule = SparsitySchedule(config)
    assert [schedule.sparsity_at(r) for r in (0, 1, 2, 3)] == [0.0, 0.0, 0.0, 0.0]
    assert schedule.sparsity_at(13) == pytest.approx(0.8)
    assert schedule.sparsity_at(500) == pytest.approx(0.8)
    values = [schedule.sparsity_at(r) for r in range(0, 20)]
    assert all(a <= b for a, b in itertools.pairwise(values))
    # Cubic: half-way through the ramp, 7/8 of the target is already pruned.
    assert schedule.sparsity_at(8) == pytest.approx(0.8 * 7 / 8)


def test_qat_model_prunes_trains_and_keeps_its_exchanged_keys() -> None:
    spec = ModelSpec("mobilenet", (1, 28, 28), num_classes=10, width=0.5)
    keys = list(exchanged_state(build_model(spec)))
    model = prepare_qat(build_model(spec, seed=0), QATConfig(weight_bits=4))
    masks = compute_masks(model, 0.6, "layer")
    apply_masks(model, masks)
    _train(model, steps=3)
    assert list(exchanged_state(model)) == keys
    assert measure_sparsity(model) == pytest.approx(0.6, abs=0.01)
    weights = _weights(model)
    assert all((weights[name][~mask] == 0).all() for name, mask in masks.items())


def test_remove_masks_bakes_zeros_into_plain_weight_parameters() -> None:
    model = build_model(LENET, seed=0)
    optimizer_parameters = {id(p) for p in model.parameters()}
    apply_masks(model, compute_masks(model, 0.5, "global"))
    remove_masks(model)
    assert not prune.is_pruned(model)
    assert not any(name.endswith(("_orig", "_mask")) for name in model.state_dict())
    assert {id(p) for p in model.parameters()} == optimizer_parameters
    assert measure_sparsity(model) == pytest.approx(0.5, abs=0.01)


def test_prunable_parameters_skip_the_classifier() -> None:
    model = build_model(ModelSpec("mlp", (24,), num_classes=7))
    assert [name for name, _ in prunable_parameters(model)] == [
        "hidden.1.weight",
        "hidden.3.weight",
    ]


def test_apply_masks_rejects_unknown_and_misshaped_masks_by_name() -> None:
    model = build_model(LENET, seed=0)
    with pytest.raises(ValueError, match=r"'classifier\.weight' is not a prunable weight"):
        apply_masks(model, {"classifier.weight": np.ones((10, 64), dtype=bool)})
    with pytest.raises(ValueError, match=r"'fc1.weight' has shape \(3,\)"):
        apply_masks(model, {"fc1.weight": np.ones(3, dtype=bool)})
    assert not prune.is_pruned(model)


def test_measure_sparsity_of_arrays_and_selected_names() -> None:
    tensors = {"a": np.array([0.0, 0.0, 1.0, 2.0]), "b": torch.tensor([0.0, 5.0])}
    assert measure_sparsity(tensors) == pytest.approx(3 / 6)
    assert measure_sparsity(tensors, names=["b"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="'c'"):
        measure_sparsity(tensors, names=["c"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_sparsity": 0.99}, "target_sparsity must be in [0, 0.95]; got 0.99"),
        ({"target_sparsity": -0.1}, "target_sparsity must be in [0, 0.95]; got -0.1"),
        ({"method": "random"}, "method must be one of global, layer, structured; got 'random'"),
        ({"ramp_rounds": 0}, "ramp_rounds must be an integer >= 1; got 0"),
        ({"start_round": 0}, "start_round must be an integer >= 1; got 0"),
    ],
)
def test_invalid_pruning_config_raises_a_one_line_config_error(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        PruningConfig(**kwargs)
    assert str(error.value) == message


def test_compute_masks_rejects_an_impossible_sparsity() -> None:
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\]; got 1.5"):
        compute_masks(build_model(LENET), 1.5, "global")


def test_module_examples_run() -> None:
    module = importlib.import_module("stamen.compression.pruning")
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0


def test_masks_of_a_channels_last_model_match_the_plain_model() -> None:
    from stamen.models import to_channels_last

    plain = build_model(LENET, seed=3)
    channels_last = to_channels_last(build_model(LENET, seed=3))
    expected = compute_masks(plain, 0.6, "global")
    masks = compute_masks(channels_last, 0.6, "global")
    assert masks.keys() == expected.keys()
    assert all(np.array_equal(masks[name], expected[name]) for name in expected)
