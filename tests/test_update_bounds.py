"""Bounds on one device's influence: weight cap, clipping and direction, and the model guard."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from stamen.config import DefenseSettings, StrategySettings
from stamen.core.rounds import RoundOutcome
from stamen.engine import RoundEngine
from stamen.strategies.krum import assumed_attackers
from stamen.strategies.registry import build_strategy
from stamen.transport import ValidUpdate
from stamen.transport.bounding import bound_updates
from stamen.transport.deltas import l2_norm, weighted_mean_delta


def update(values: list[float], n: int = 10, node: int = 0) -> ValidUpdate:
    return ValidUpdate({"w": np.asarray(values, np.float64)}, n, 0, False, None, node_id=node)


def honest_round(count: int = 8) -> list[ValidUpdate]:
    rng = np.random.default_rng(0)
    return [update(list(1.0 + 0.3 * rng.standard_normal(6)), node=i) for i in range(count)]


def test_a_scaled_update_counts_no_more_than_an_honest_one() -> None:
    honest = honest_round()
    bounded = bound_updates([*honest, update([1000.0] * 6, node=99)], DefenseSettings())
    attacker = next(u for u in bounded.kept if u.node_id == 99)
    honest_median = float(np.median([l2_norm(u.delta) for u in honest]))
    assert l2_norm(attacker.delta) <= bounded.clip_bound + 1e-9
    assert bounded.clip_bound == pytest.approx(2 * honest_median, 0.2)  # 2 x the round's median


def test_a_huge_self_reported_dataset_is_capped_at_a_multiple_of_the_round_median() -> None:
    bounded = bound_updates(
        [*honest_round(), update([1.0] * 6, n=10**9, node=99)], DefenseSettings()
    )
    assert bounded.capped_weights == 1
    assert max(u.num_examples for u in bounded.kept) == 30  # 3 x the median of 10
    fixed = bound_updates(honest_round(), DefenseSettings(max_num_examples=4))
    assert {u.num_examples for u in fixed.kept} == {4}


def test_a_sign_flipped_update_is_rejected_with_its_cosine() -> None:
    honest = honest_round()
    flipped = update([-10.0] * 6, node=99)
    bounded = bound_updates([*honest, flipped], DefenseSettings())
    assert [u.node_id for u, _ in bounded.rejected] == [99]
    assert "points against the round: cosine -" in bounded.rejected[0][1]
    assert bounded.positions == list(range(8))
    mean = weighted_mean_delta(bounded.kept)["w"]
    assert (mean > 0.5).all()


def test_noise_counts_for_nothing_and_does_not_dilute_the_honest_step() -> None:
    honest = honest_round()
    noise = update([3.0, -3.0, 3.0, -3.0, 3.0, -3.0], node=99)  # orthogonal to the round
    bounded = bound_updates([*honest, noise], DefenseSettings())
    trust = {u.node_id: u.trust for u in bounded.kept}
    assert trust[99] == 0.0 and all(trust[i] == 1.0 for i in range(8))
    assert bounded.discounted == 1 and bounded.median_cosine is not None
    assert np.allclose(weighted_mean_delta(bounded.kept)["w"], weighted_mean_delta(honest)["w"])


def test_a_round_split_in_half_is_not_a_minority_and_keeps_everyone() -> None:
    split = [update([1.0, 0.0], node=i) for i in range(3)]
    split += [update([-1.0, 0.0], node=3 + i) for i in range(3)]
    assert bound_updates(split, DefenseSettings()).rejected == []


def test_small_rounds_skip_the_direction_check() -> None:
    pair = [update([1.0, 0.0]), update([-1.0, 0.0]), update([1.0, 0.1])]
    assert len(bound_updates(pair, DefenseSettings()).kept) == 3


def test_defense_off_leaves_updates_untouched() -> None:
    updates = [*honest_round(), update([1000.0] * 6, n=10**9)]
    bounded = bound_updates(updates, DefenseSettings.off())
    assert bounded.kept == updates and bounded.clip_bound is None
    assert bounded.discounted == 0 and bounded.median_cosine is None


@pytest.mark.parametrize(("n", "f"), [(3, 0), (5, 1), (10, 3), (20, 6), (40, 12)])
def test_krum_assumes_a_share_of_each_round_within_its_guarantee(n: int, f: int) -> None:
    assert assumed_attackers(n, 0.3) == f
    assert n > 2 * f + 2 or f == 0


def test_robust_strategies_follow_the_attacker_fraction_unless_set() -> None:
    from stamen.contract import TrainTask
    from stamen.models import ModelSpec, build_model

    spec = ModelSpec(name="mlp", input_shape=(8,), num_classes=2)
    common = {"model_factory": lambda: build_model(spec), "task": TrainTask(model="mlp")}
    trimmed = build_strategy(
        StrategySettings(name="trimmed-mean", attacker_fraction=0.25), **common
    )
    assert trimmed.trim_fraction == 0.25
    krum = build_strategy(StrategySettings(name="multi-krum"), **common)
    assert krum.byzantine is None and krum.attacker_fraction == 0.3
    fixed = build_strategy(StrategySettings(name="krum", krum_byzantine=2), **common)
    assert fixed.byzantine == 2


class _Exploding:
    """A strategy whose second round produces a NaN model and third an exploded one."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def summary(self) -> None: ...

    def begin(self, grid: object, arrays: ArrayRecord, first_round: int) -> None: ...

    def end(self) -> None: ...

    def run_round(self, server_round: int, arrays: ArrayRecord, grid: object, timeout: float):
        self.seen.append(float(arrays["w"].numpy()[0]))
        value = {1: 1.5, 2: np.nan, 3: 1e6, 4: 2.0}[server_round]
        return RoundOutcome(ArrayRecord({"w": Array(np.full(4, value, np.float32))}))


def test_the_engine_never_applies_a_non_finite_or_exploded_model() -> None:
    strategy = _Exploding()
    start = ArrayRecord({"w": Array(np.ones(4, np.float32))})
    result = RoundEngine(strategy).run(None, start, num_rounds=4)  # type: ignore[arg-type]
    assert strategy.seen == [1.0, 1.5, 1.5, 1.5]  # devices never received rounds 2 and 3
    assert sorted(result.refused) == [2, 3]
    assert "NaN" in result.refused[2] and "moved by" in result.refused[3]
    assert float(result.arrays["w"].numpy()[0]) == 2.0


def test_agreement_and_clip_bound_match_float64_on_float32_deltas() -> None:
    # The server measures agreement with float32 products (no float64 copy of the deltas);
    # the figures it reports and bounds by stay those of float64 arithmetic.
    rng = np.random.default_rng(3)
    shared = rng.standard_normal(5000)
    deltas = [(shared + 2.0 * rng.standard_normal(5000)).astype(np.float32) for _ in range(40)]
    updates = [
        ValidUpdate({"a": d[:4000].reshape(40, 100), "b": d[4000:]}, 10, 0, False, None)
        for d in deltas
    ]
    units = [d.astype(np.float64) / np.linalg.norm(d.astype(np.float64)) for d in deltas]
    total = np.sum(units, axis=0)
    expected = [float(u @ (total - u) / np.linalg.norm(total - u)) for u in units]
    defense = DefenseSettings()
    bounded = bound_updates(updates, defense)
    assert bounded.median_cosine == pytest.approx(float(np.median(expected)), abs=1e-6)
    norms = [float(np.linalg.norm(d.astype(np.float64))) for d in deltas]
    assert bounded.clip_bound == pytest.approx(defense.clip_factor * float(np.median(norms)))
