"""Options simulate and server share: the same flag sets the same config key, in the same panel."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stamen.cli import option_table
from stamen.cli.main import app
from stamen.cli.options import Option
from stamen.cli.server_command import EDGE_DEADLINE
from stamen.cli.server_command import OPTIONS as SERVER_OPTIONS
from stamen.cli.simulate_command import OPTIONS as SIMULATE_OPTIONS
from stamen.server.monitor import Role, load_tokens

runner = CliRunner()
COMMANDS = ("simulate", "server")

SAMPLES: dict[str, tuple[list[str], Any]] = {
    "preset": (["--preset", "fp32"], "fp32"),
    "dataset": (["--dataset", "digits"], "digits"),
    "model": (["--model", "mlp"], "mlp"),
    "num_devices": (["--num-devices", "40"], 40),
    "devices_per_round": (["--devices-per-round", "4"], 4),
    "rounds": (["--rounds", "3"], 3),
    "seed": (["--seed", "7"], 7),
    "strategy": (["--strategy", "median"], "median"),
    "deadline": (["--deadline", "30"], 30.0),
    "over_selection": (["--over-selection", "0.5"], 0.5),
    "local_epochs": (["--local-epochs", "2"], 2),
    "lr": (["--lr", "0.01"], 0.01),
    "batch_size": (["--batch-size", "8"], 8),
    "qat": (["--no-qat"], False),
    "qat_bits": (["--qat-bits", "4"], 4),
    "sparsity": (["--sparsity", "0.3"], 0.3),
    "topk": (["--topk", "0.1"], 0.1),
    "uplink_values": (["--uplink-values", "q8"], "q8"),
    "error_feedback": (["--no-error-feedback"], False),
    "downlink_values": (["--downlink-values", "fp16"], "fp16"),
    "secure_aggregation": (["--secure-aggregation"], True),
    "dp": (["--secure-aggregation", "--dp", "distributed"], "distributed"),
    "target_epsilon": (["--target-epsilon", "4"], 4.0),
    "dp_delta": (["--dp-delta", "1e-6"], 1e-6),
    "dp_clip": (["--dp-clip", "0.2"], 0.2),
}
"""A valid value for each config flag both commands take, and what the config then holds."""

SHARED = [o for o in SIMULATE_OPTIONS if o in SERVER_OPTIONS]
SHARED_KEYED = [o for o in SHARED if o.key]


def resolved(command: str, *args: str) -> dict[str, Any]:
    """The config ``command --dry-run`` prints, parsed as the TOML it is."""
    result = runner.invoke(app, [command, "--dry-run", *args])
    assert result.exit_code == 0, result.output
    return tomllib.loads(result.output)


def lookup(config: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        config = config[part]
    return config


def test_every_shared_config_flag_has_a_sample() -> None:
    assert {o.name for o in SHARED_KEYED} == set(SAMPLES)
    for name in ("over_selection", "deadline", "rounds", "dataset", "devices_per_round"):
        assert name in SAMPLES


@pytest.mark.parametrize("option", SHARED_KEYED, ids=lambda o: o.name)
def test_a_shared_flag_sets_the_same_config_key_on_both_commands(option: Option) -> None:
    args, expected = SAMPLES[option.name]
    assert option.key is not None
    for command in COMMANDS:
        assert lookup(resolved(command, *args), option.key) == expected, command


def test_over_selection_deadline_and_rounds_resolve_alike(tmp_path: Path) -> None:
    config_file = tmp_path / "run.toml"
    config_file.write_text("[federation]\nrounds = 7\ndeadline = 5.0\nover_selection = 0.2\n")
    layers: list[tuple[list[str], tuple[int, float, float]]] = [
        ([], (20, 0.0, 0.0)),
        (["--config", str(config_file)], (7, 5.0, 0.2)),
        (["--config", str(config_file), "--set", "federation.rounds=8"], (8, 5.0, 0.2)),
        (
            ["--config", str(config_file), "--set", "federation.rounds=8", "--rounds", "9"],
            (9, 5.0, 0.2),
        ),
        (["--deadline", "12", "--over-selection", "1.5"], (20, 12.0, 1.5)),
    ]
    for args, (rounds, deadline, over_selection) in layers:
        for command in COMMANDS:
            federation = resolved(command, *args)["federation"]
            if command == "server" and not args:
                deadline = EDGE_DEADLINE  # real devices get one unless told otherwise
            assert (federation["rounds"], federation["deadline"]) == (rounds, deadline), args
            assert federation["over_selection"] == over_selection, (command, args)


def test_qat_bits_turn_qat_on_unless_a_qat_flag_says_otherwise() -> None:
    for command in COMMANDS:
        assert resolved(command, "--preset", "fp32", "--qat-bits", "4")["qat"]["enabled"] is True
        qat = resolved(command, "--preset", "fp32", "--qat-bits", "4", "--no-qat")["qat"]
        assert qat == {**qat, "enabled": False, "weight_bits": 4}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--over-selection", "11"], "federation.over_selection must be between 0 and 10; got 11"),
        (["--deadline", "-1"], "federation.deadline must be >= 0 seconds"),
        (["--rounds", "0"], "federation.rounds must be >= 1; got 0"),
        (["--set", "rounds"], "--set expects section.key=value; got 'rounds'"),
        (["--strategy", "fedsgd"], "strategy.name must be one of fedavg, fedprox"),
    ],
)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_shared_value_is_the_same_line_on_both_commands(
    command: str, args: list[str], message: str
) -> None:
    result = runner.invoke(app, [command, "--dry-run", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def help_panels(command: str) -> dict[str, str]:
    """Each flag of ``command --help`` and the rich panel it is listed under."""
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    panels: dict[str, str] = {}
    panel = ""
    for line in result.output.splitlines():
        if title := re.match(r"╭─ (.+?) ─", line):
            panel = title.group(1)
        elif flag := re.match(r"│ (--[\w-]+)", line):
            panels[flag.group(1)] = panel
    return panels


@pytest.mark.parametrize(
    ("command", "options"), [("simulate", SIMULATE_OPTIONS), ("server", SERVER_OPTIONS)]
)
def test_help_lists_every_option_in_its_panel(command: str, options: tuple[Option, ...]) -> None:
    panels = help_panels(command)
    for option in options:
        flag = option.flags[0] if option.flags else "--" + option.name.replace("_", "-")
        assert panels[flag.split("/")[0]] == option.panel, flag


def test_shared_options_sit_in_the_same_panels_on_both_commands() -> None:
    simulate, server = help_panels("simulate"), help_panels("server")
    shared = {flag: panel for flag, panel in simulate.items() if flag in server}
    assert {"--over-selection", "--deadline", "--rounds", "--config", "--set"} <= set(shared)
    assert all(server[flag] == panel for flag, panel in shared.items())
    assert simulate["--over-selection"] == option_table.FED
    assert server["--max-payload-mb"] == option_table.EDGE


def test_monitor_token_help_names_the_roles_the_token_file_parser_accepts(tmp_path: Path) -> None:
    for command in COMMANDS:
        text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        described = re.search(r"'<([\w|-]+)> <token>' a line", text)
        assert described is not None, command
        roles = described.group(1).split("|")
        assert sorted(roles) == sorted(role.value for role in Role)
        token_file = tmp_path / "tokens"
        token_file.write_text("".join(f"{role} token-for-{role}-0123456789\n" for role in roles))
        tokens = load_tokens(token_file=token_file)
        for role in roles:
            assert tokens.role_of(f"token-for-{role}-0123456789") == Role(role)
