"""``stamen strategies``: every aggregation strategy, with its paper and its config keys."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from stamen.cli.output import console


def strategies_table() -> Table:
    """A table of the strategies ``--strategy`` and ``strategy.name`` accept."""
    from stamen.strategies import STRATEGIES

    table = Table(box=box.SIMPLE_HEAD, title="Aggregation strategies (--strategy NAME)")
    table.add_column("name", style="bold")
    table.add_column("what it does")
    table.add_column("paper")
    for name, entry in STRATEGIES.items():
        table.add_row(name.value, entry.description, entry.paper)
    return table


def print_strategies(console: Console) -> None:
    """Print the strategies table and where their settings live."""
    console.print(strategies_table())
    console.print(
        "Settings: the [bold]\\[strategy][/] config section, or --set strategy.KEY=VALUE "
        "(see stamen simulate --dry-run)."
    )


def strategies() -> None:
    """List the aggregation strategies, one line each, with their papers."""
    print_strategies(console)
