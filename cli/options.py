"""Command-line options defined once, as data, and the typer signatures built from them.

An :class:`Option` holds everything about a flag: its parameter name, the type
typer parses, its help and help panel, its default, and the config key it sets.
:func:`takes` turns a list of them into the signature typer reads, so a command
is written as a plain function of the :class:`OptionValues` it was given; typer
still parses, validates and renders ``--help`` exactly as for a hand-written
signature.

Example:
    >>> import typer
    >>> from typer.testing import CliRunner
    >>> rounds = Option("rounds", int | None, "Rounds.", "Federation", key="federation.rounds")
    >>> app = typer.Typer()
    >>> @app.command()
    ... @takes([rounds])
    ... def show(values: OptionValues) -> None:
    ...     print(values[rounds], values.flag_overrides())
    >>> print(CliRunner().invoke(app, ["--rounds", "3"]).output.strip())
    3 {'federation.rounds': 3}
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import typer

R = TypeVar("R")


@dataclass(frozen=True)
class Option:
    """One command-line option, the same on every command that takes it."""

    name: str
    """The parameter name; the flag is ``--name-with-dashes`` unless ``flags`` say otherwise."""
    type: Any
    """What typer parses it as, e.g. ``int | None`` or an enum."""
    help: str
    panel: str
    """The rich help panel ``--help`` lists it under."""
    key: str | None = None
    """The config key the flag sets (``section.field``), where it sets one."""
    default: Any = None
    flags: tuple[str, ...] = ()
    """Explicit declarations, e.g. ``("--config", "-c")`` or ``("--qat/--no-qat",)``."""
    implies: Mapping[str, Any] = field(default_factory=dict)
    """More config keys the flag sets, unless a flag of its own sets that key."""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"option name {self.name!r} is not a Python identifier")

    def parameter(self) -> inspect.Parameter:
        """This option as a keyword parameter typer reads: ``name: Annotated[type, Option]``."""
        info = typer.Option(*self.flags, help=self.help, rich_help_panel=self.panel)
        return inspect.Parameter(
            self.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=self.default,
            annotation=Annotated[self.type, info],
        )


class OptionValues:
    """What one invocation of a command was given, looked up by :class:`Option`."""

    def __init__(self, options: Sequence[Option], values: Mapping[str, Any]) -> None:
        self.options = tuple(options)
        self._values = dict(values)

    def __getitem__(self, option: Option) -> Any:
        if option.name not in self._values:
            raise KeyError(f"this command takes no --{option.name.replace('_', '-')}")
        return self._values[option.name]

    def flag_overrides(self) -> dict[str, Any]:
        """The config keys the given flags set (enums by their value), in option order."""
        given = {
            option.key: self._values[option.name]
            for option in self.options
            if option.key and self._values[option.name] is not None
        }
        overrides = {key: getattr(value, "value", value) for key, value in given.items()}
        for option in self.options:
            if option.key in given:
                overrides.update(
                    (key, value) for key, value in option.implies.items() if key not in given
                )
        return overrides


def takes(options: Sequence[Option]) -> Callable[[Callable[[OptionValues], R]], Callable[..., R]]:
    """Give ``command(values)`` the typer signature of ``options``, in their order.

    The result keeps the command's name and docstring (its ``--help`` text).
    """
    names = [option.name for option in options]
    if len(set(names)) != len(names):
        raise ValueError(f"an option is listed twice: {names}")
    signature = inspect.Signature([option.parameter() for option in options])

    def decorate(command: Callable[[OptionValues], R]) -> Callable[..., R]:
        def invoke(**values: Any) -> R:
            return command(OptionValues(options, values))

        invoke.__name__ = command.__name__
        invoke.__qualname__ = command.__qualname__
        invoke.__doc__ = command.__doc__
        invoke.__module__ = command.__module__
        invoke.__signature__ = signature  # type: ignore[attr-defined]
        return invoke

    return decorate
