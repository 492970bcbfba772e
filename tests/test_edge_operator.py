"""An operator's day without surprises, in fast tests: what the state directory holds and
what a start does with it, edge round counts told once, shape reasons, monitor token roles.

The real-process halves are in ``test_edge_operator_processes.py`` (slow).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from stamen.cli.edge_rounds import EDGE_ROUNDS_FILE, EdgeRoundLog
from stamen.cli.main import app
from stamen.cli.server_command import plan_start
from stamen.client.agent.exits import does_not_fit
from stamen.compression import UplinkCodec, UplinkCodecConfig, decode_update
from stamen.config import StamenConfig, load_config
from stamen.core.errors import ConfigError, ShapeMismatch
from stamen.server.checkpoint import PREVIOUS_DIR, Checkpoint, CheckpointStore
from stamen.server.edge.rounds import EdgeRoundStats

DIGITS = {"dataset": "digits", "model": "mlp", "num-devices": 2, "devices-per-round": 2}
FP32 = {**DIGITS, "preset": "fp32", "pruning.ramp_rounds": 1}
"""``pruning.ramp_rounds`` follows --rounds unless set, and a different one is another setup."""


def config_for(rounds: int, **extra: object) -> StamenConfig:
    return load_config(overrides={**FP32, "rounds": rounds, **extra})


def saved_run(
    tmp_path: Path, *, done: int, rounds: int, ended: str | None = None
) -> CheckpointStore:
    """A state directory holding a run that got through ``done`` of ``rounds`` rounds."""
    store = CheckpointStore(tmp_path / "server-state")
    config = config_for(rounds)
    store.save(
        Checkpoint(round=done, arrays={"w": np.zeros(2, np.float32)}, config=config.to_dict())
    )
    if ended is not None:
        store.mark_ended(ended, tmp_path / "runs" / "first")
    return store


# -- resuming is explicit -----------------------------------------------------------------


def test_an_empty_state_dir_starts_a_new_run(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "server-state")
    assert "holds no run; starting a new one" in plan_start(store, config_for(3), False, False)
    note = plan_start(store, config_for(3), True, False)
    assert "nothing to resume" in note


def test_a_finished_run_is_an_error_until_the_operator_picks_resume_or_fresh(
    tmp_path: Path,
) -> None:
    store = saved_run(tmp_path, done=3, rounds=3, ended="finished")
    with pytest.raises(ConfigError) as refused:
        plan_start(store, config_for(3), False, False)
    message = str(refused.value)
    assert "holds a finished run (3 of 3 rounds" in message
    assert f"results in {tmp_path / 'runs' / 'first'}" in message
    assert "--resume" in message and "--fresh" in message
    assert store.path.exists()  # nothing moved without a choice

    with pytest.raises(ConfigError, match="leaves nothing to train; raise --rounds above 3"):
        plan_start(store, config_for(3), True, False)
    note = plan_start(store, config_for(5), True, False)
    assert "--resume: going on with rounds 4-5" in note


def test_fresh_moves_the_old_run_aside_and_keeps_it(tmp_path: Path) -> None:
    store = saved_run(tmp_path, done=3, rounds=3, ended="finished")
    note = plan_start(store, config_for(3), False, True)
    assert "--fresh: moved it to" in note and "starting a new run" in note
    (kept,) = (store.directory / PREVIOUS_DIR).iterdir()
    assert (kept / "checkpoint.npz").exists() and (kept / "run-ended.json").exists()
    assert store.inspect() is None  # the new run starts from nothing
    assert "holds no run" in plan_start(store, config_for(3), False, False)


def test_an_unfinished_run_resumes_by_default_and_says_so(tmp_path: Path) -> None:
    store = saved_run(tmp_path, done=2, rounds=5)
    note = plan_start(store, config_for(5), False, False)
    assert "holds an unfinished run (2 of 5 rounds" in note
    assert "resuming it (--fresh starts over instead) with rounds 3-5" in note


def test_a_stopped_run_counts_as_ended_and_a_new_round_makes_it_live_again(
    tmp_path: Path,
) -> None:
    store = saved_run(tmp_path, done=2, rounds=5, ended="stopped")
    with pytest.raises(ConfigError, match="holds a stopped run"):
        plan_start(store, config_for(5), False, False)
    assert "going on with rounds 3-5" in plan_start(store, config_for(5), True, False)
    store.save(Checkpoint(round=3, arrays={"w": np.zeros(2, np.float32)}, config={}))
    stored = store.inspect()
    assert stored is not None and stored.ended is None  # the resumed run is live


def test_a_run_of_another_setup_is_refused_before_any_device_connects(tmp_path: Path) -> None:
    store = saved_run(tmp_path, done=1, rounds=5)
    with pytest.raises(ConfigError) as refused:
        plan_start(store, config_for(5, model="lenet"), False, False)
    assert "another data, model or compression config (training.model: 'mlp' -> 'lenet')" in (
        str(refused.value)
    )
    with pytest.raises(ConfigError, match="contradict"):
        plan_start(store, config_for(5), True, True)


# -- the edge round counts, told once -------------------------------------------------------


def test_round_table_jsonl_and_summary_agree_after_late_uploads(tmp_path: Path) -> None:
    console = Console(record=True, width=120)
    log = EdgeRoundLog(console, tmp_path)
    first = EdgeRoundStats(
        "1", "train", sent=3, participants=2, replies=2, timed_out=1, timed_out_nodes=[7]
    )
    second = EdgeRoundStats(
        "2", "train", sent=3, participants=2, replies=3, surplus_dropped=1, over_selected=1
    )
    log.on_edge_round(first)
    log.on_edge_round(second)
    # After round 1 closed: the straggler's upload arrives late, another is refused.
    first.late_dropped += 1
    first.refused_uploads += 1
    summary: dict[str, object] = {}
    log.on_finish(summary)

    lines = [json.loads(x) for x in (tmp_path / EDGE_ROUNDS_FILE).read_text().splitlines()]
    edge = summary["edge"]
    assert isinstance(edge, dict)
    assert lines == edge["rounds"]
    assert lines[0]["late_dropped"] == 1 and lines[0]["refused_uploads"] == 1
    assert edge["late_dropped"] == 1 and edge["refused_uploads"] == 1 and edge["timed_out"] == 1
    # "answered" is the grid's own count: the round table's participants.
    assert [line["participants"] for line in lines] == [2, 2]
    assert lines[0]["participants"] == first.timing(clock=0.0).participants

    console.print(log.table())
    rows = {
        row.split()[0]: [int(x) for x in row.split()[1:]]
        for row in console.export_text().splitlines()
        if re.match(r"\s*\d+\s+\d", row)
    }
    assert rows["1"] == [3, 2, 1, 0, 0, 1, 0, 1]
    assert rows["2"] == [3, 2, 0, 0, 0, 0, 1, 0]


# -- shape reasons read the right way round -------------------------------------------------


RNG = np.random.default_rng(0)


def test_the_server_names_its_own_shape_as_expected_and_the_devices_as_got() -> None:
    server_model = {"w": (3, 4)}
    device_delta = {"w": np.ones((4, 3), np.float32)}  # a device whose data gives another shape
    payload = (
        UplinkCodec(UplinkCodecConfig())
        .encode(device_delta, round_num=1, base_model_hash="0" * 64, residual=None, rng=RNG)
        .payload
    )
    with pytest.raises(ShapeMismatch) as mismatch:
        decode_update(payload, expected_shapes=server_model)
    assert mismatch.value.expected == (3, 4) and mismatch.value.got == (4, 3)
    assert str(mismatch.value) == "tensor 'w': expected shape (3, 4), got (4, 3)"


def test_the_agent_reports_the_servers_model_as_the_one_it_got() -> None:
    # The device decodes the server's model against its own data's shapes.
    decoding = ShapeMismatch("hidden.1.weight", expected=(128, 64), got=(128, 784))
    assert does_not_fit(decoding) == (
        "this device's data does not fit the server's model: tensor 'hidden.1.weight' is "
        "(128, 784) in the server's model, and this device's data needs (128, 64)"
    )
    flat = ShapeMismatch("", expected=(10_314,), got=(17_226,))
    assert does_not_fit(flat) == (
        "this device's data does not fit the server's model: it has 17,226 parameters, and "
        "this device's data needs a model of 10,314"
    )


# -- monitor token roles: the documented form runs ------------------------------------------


def test_the_token_file_form_documented_in_server_help_is_accepted(tmp_path: Path) -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["server", "--help"], env={"COLUMNS": "300"}).output
    documented = re.search(r"'<([a-z|-]+)> <token>'", " ".join(shown.split()))
    assert documented is not None, "stamen server --help no longer documents the token form"
    roles = documented.group(1).split("|")
    assert set(roles) == {"operator", "read-only"}
    for role in [*roles, "readonly"]:  # and the environment variable's spelling
        tokens = tmp_path / f"{role}.tokens"
        tokens.write_text(f"{role} a-token-of-enough-length\n")
        result = runner.invoke(
            app,
            ["server", "--monitor-port", "0", "--monitor-token-file", str(tokens), "--dry-run"],
            env={"COLUMNS": "200"},
        )
        assert result.exit_code == 0, result.output
    tokens.write_text("viewer a-token-of-enough-length\n")
    result = runner.invoke(
        app, ["server", "--monitor-port", "0", "--monitor-token-file", str(tokens), "--dry-run"]
    )
    assert result.exit_code == 2
    assert "expected '<role> <token>' with role read-only or operator" in result.output
