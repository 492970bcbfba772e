"""The aggregation maths of each strategy, called directly on decoded deltas."""

import math
from typing import Any

import numpy as np
import pytest

from stamen.config import StrategyName, StrategySettings
from stamen.contract import TrainTask
from stamen.core.errors import ConfigError
from stamen.models import ModelName, ModelSpec, build_model
from stamen.strategies import (
    STRATEGIES,
    FedAdam,
    FedYogi,
    NormBoundedAvg,
    build_strategy,
    coordinate_median,
    krum_select,
    norm_bounded_mean,
    staleness_scaled,
    trimmed_mean,
)
from stamen.transport import ValidUpdate
from stamen.transport.deltas import weighted_mean_delta

SPEC = ModelSpec(name=ModelName.MLP, input_shape=(64,), num_classes=10)


def common() -> dict[str, Any]:
    return {"model_factory": lambda: build_model(SPEC), "task": TrainTask(model=SPEC.name)}


def update(values: list[float] | np.ndarray, n: int = 10) -> ValidUpdate:
    return ValidUpdate({"w": np.asarray(values, np.float64)}, n, 0, False, None)


def honest_and_attackers(seed: int = 0) -> tuple[list[ValidUpdate], np.ndarray]:
    """16 honest deltas around a common direction, 4 sign-flipped and scaled 10x."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=50)
    honest = [direction + 0.3 * rng.normal(size=50) for _ in range(16)]
    attackers = [-10 * h for h in honest[:4]]
    return [update(v) for v in honest + attackers], np.mean(honest, axis=0)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_fedadam_second_step_follows_the_adam_formula() -> None:
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    adam = FedAdam(server_lr=lr, beta1=b1, beta2=b2, tau=tau, **common())
    x0 = {"w": np.array([0.5, -1.0, 2.0], np.float32)}
    d1, d2 = np.array([0.2, -0.1, 0.0]), np.array([0.1, 0.3, -0.2])
    x1 = adam.apply_delta(x0, {"w": d1})
    x2 = adam.apply_delta(x1, {"w": d2})
    m1 = (1 - b1) * d1
    v1 = b2 * tau**2 + (1 - b2) * d1**2
    m2 = b1 * m1 + (1 - b1) * d2
    v2 = b2 * v1 + (1 - b2) * d2**2
    np.testing.assert_allclose(x1["w"], x0["w"] + lr * m1 / (np.sqrt(v1) + tau), rtol=1e-6)
    np.testing.assert_allclose(x2["w"], x1["w"] + lr * m2 / (np.sqrt(v2) + tau), rtol=1e-6)
    np.testing.assert_allclose(adam.m["w"], m2)
    np.testing.assert_allclose(adam.v["w"], v2)
    # The moments matter: the second step is not what a fresh optimizer would take.
    fresh = FedAdam(server_lr=lr, beta1=b1, beta2=b2, tau=tau, **common())
    assert not np.allclose(fresh.apply_delta(x1, {"w": d2})["w"], x2["w"])


def test_fedyogi_moves_the_second_moment_additively_where_adam_decays_it() -> None:
    b2, tau = 0.9, 1e-3
    yogi = FedYogi(server_lr=0.1, beta1=0.9, beta2=b2, tau=tau, **common())
    adam = FedAdam(server_lr=0.1, beta1=0.9, beta2=b2, tau=tau, **common())
    x0 = {"w": np.zeros(2, np.float32)}
    d1, d2 = np.array([1.0, 0.01]), np.array([0.01, 1.0])
    for strategy in (yogi, adam):
        strategy.apply_delta(strategy.apply_delta(x0, {"w": d1}), {"w": d2})
    v0 = np.full(2, tau**2)
    yogi_v1 = v0 - (1 - b2) * d1**2 * np.sign(v0 - d1**2)
    yogi_v2 = yogi_v1 - (1 - b2) * d2**2 * np.sign(yogi_v1 - d2**2)
    np.testing.assert_allclose(yogi.v["w"], yogi_v2)
    adam_v2 = b2 * (b2 * v0 + (1 - b2) * d1**2) + (1 - b2) * d2**2
    np.testing.assert_allclose(adam.v["w"], adam_v2)
    # First coordinate: a large delta, then a small one. Adam's v decays by beta2;
    # Yogi's shrinks only by (1 - beta2) * d2**2, so it keeps more of its memory.
    assert yogi.v["w"][0] > adam.v["w"][0]
    assert yogi.v["w"][0] == pytest.approx(yogi_v1[0] - (1 - b2) * 0.01**2)


def test_robust_aggregates_resist_sign_flipped_scaled_updates() -> None:
    updates, honest_mean = honest_and_attackers()
    mean = weighted_mean_delta(updates)["w"]
    assert cosine(mean, honest_mean) < 0  # plain FedAvg is pulled the wrong way
    robust = {
        "median": coordinate_median(updates)["w"],
        "trimmed": trimmed_mean(updates, 0.2)["w"],
        "norm-bounded": norm_bounded_mean(updates, 8.0)["w"],
        "multi-krum": weighted_mean_delta(
            [updates[int(i)] for i in krum_select(updates, byzantine=4, keep=16)]
        )["w"],
    }
    for name, value in robust.items():
        assert cosine(value, honest_mean) > 0.9, name


def test_krum_keeps_none_of_the_outliers() -> None:
    updates, _ = honest_and_attackers(seed=1)
    assert set(int(i) for i in krum_select(updates, byzantine=4, keep=16)) == set(range(16))
    assert int(krum_select(updates, byzantine=4, keep=1)[0]) < 16


def test_trimmed_mean_drops_the_extremes_and_keeps_at_least_one_value() -> None:
    values = [update([v]) for v in (-100.0, 1.0, 2.0, 3.0, 100.0)]
    assert trimmed_mean(values, 0.2)["w"][0] == pytest.approx(2.0)
    assert trimmed_mean(values[:2], 0.49)["w"][0] == pytest.approx(-49.5)  # nothing to trim


def test_norm_bounding_clips_only_the_large_deltas() -> None:
    small, large = update([3.0, 4.0]), update([30.0, 40.0])
    result = norm_bounded_mean([small, large], 5.0)["w"]
    np.testing.assert_allclose(result, [3.0, 4.0])  # both now have norm 5
    adaptive = NormBoundedAvg(**common())
    adaptive.aggregate_deltas([small, small, large])
    assert adaptive.last_bound == pytest.approx(5.0)  # the median norm


def test_fedbuff_weights_updates_by_staleness() -> None:
    delta = update([2.0])
    scaled = staleness_scaled([(delta, 0), (delta, 1), (delta, 8)], exponent=0.5, server_lr=0.5)
    assert [float(u.delta["w"][0]) for u in scaled] == pytest.approx(
        [1.0, 1.0 / math.sqrt(2), 1.0 / 3]
    )


@pytest.mark.parametrize("name", list(StrategyName))
def test_every_strategy_is_registered_and_builds(name: StrategyName) -> None:
    assert STRATEGIES[name].description and STRATEGIES[name].paper
    strategy = build_strategy(StrategySettings(name=name), **common())
    assert strategy.task.model is SPEC.name


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"trim_fraction": 0.5}, "strategy.trim_fraction must be in [0, 0.5); got 0.5"),
        ({"beta2": 1.0}, "strategy.beta2 must be in [0, 1)"),
        ({"server_lr": 0.0}, "strategy.server_lr must be > 0"),
        ({"buffer_size": 0}, "strategy.buffer_size must be >= 1"),
        ({"clip_norm": -1.0}, "strategy.clip_norm must be > 0"),
    ],
)
def test_bad_strategy_settings_are_one_clear_line(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        StrategySettings(**settings)


@pytest.mark.parametrize("strategy", [StrategyName.FEDAVG, StrategyName.FEDADAM])
def test_running_variances_move_by_factors_and_stay_positive(strategy: StrategyName) -> None:
    """A BatchNorm variance goes as a log-ratio: whatever the strategy's step, devices that
    each halved or doubled it give their geometric mean, and a sign code's overshoot (a
    change far below -1) leaves it small but positive instead of pinning it at 0."""
    from stamen.transport import model_delta

    base = {"bn.running_var": np.array([1.0, 1.0, 0.01], np.float32), "w": np.zeros(3, np.float32)}
    devices = [
        {"bn.running_var": np.array([0.5, 2.0, 0.01], np.float32), "w": np.ones(3, np.float32)},
        {"bn.running_var": np.array([2.0, 8.0, 0.01], np.float32), "w": np.ones(3, np.float32)},
    ]
    deltas = [model_delta(trained, base) for trained in devices]
    deltas[1]["bn.running_var"][2] = -4.0  # a compressed change that overshoots
    strat = build_strategy(StrategySettings(name=strategy), **common())
    mean = weighted_mean_delta([ValidUpdate(d, 10, 0, False, None) for d in deltas])
    new = strat.step(base, mean)
    assert new["bn.running_var"][:2] == pytest.approx([1.0, 4.0], rel=1e-4)
    assert 0 < new["bn.running_var"][2] < 0.01
    huge = strat.step(base, {**mean, "bn.running_var": np.full(3, 1e4)})  # past float32
    assert np.all(np.isfinite(huge["bn.running_var"]))
