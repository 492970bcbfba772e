"""Resource guards: reasons for a device to sit a round out.

A guard reads the device's battery (``/sys/class/power_supply``, where present),
its memory use and its CPU load, and returns the reason to skip, or ``None``.
The agent reports the reason to the server instead of an update.

Examples:
    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "BAT0").mkdir()
    >>> _ = (root / "BAT0" / "type").write_text("Battery\\n")
    >>> _ = (root / "BAT0" / "capacity").write_text("12\\n")
    >>> _ = (root / "BAT0" / "status").write_text("Discharging\\n")
    >>> skip_reason(GuardSettings(min_battery=20, power_supply_dir=root))
    'battery at 12% and not charging (minimum 20%)'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from stamen.config import require

POWER_SUPPLY_DIR = Path("/sys/class/power_supply")


@dataclass(frozen=True)
class GuardSettings:
    """When the agent skips a round. ``None`` turns a guard off."""

    min_battery: float | None = None
    """Skip below this battery percentage unless charging."""
    require_charging: bool = False
    """Skip unless on external power (where the device reports it)."""
    max_memory_percent: float | None = None
    """Memory ceiling: skip while system memory use is above this percentage."""
    max_cpu_load: float | None = None
    """Skip while the 1-minute load average per core is above this."""
    power_supply_dir: Path = POWER_SUPPLY_DIR

    def __post_init__(self) -> None:
        if self.min_battery is not None:
            require(0 <= self.min_battery <= 100, "min battery", "in 0..100", self.min_battery)
        if self.max_memory_percent is not None:
            require(
                0 < self.max_memory_percent <= 100,
                "max memory percent",
                "in (0, 100]",
                self.max_memory_percent,
            )
        if self.max_cpu_load is not None:
            require(self.max_cpu_load > 0, "max CPU load", "> 0", self.max_cpu_load)


@dataclass(frozen=True)
class PowerState:
    """What the power supply reports: battery level and whether it charges."""

    battery_percent: float | None
    charging: bool | None


def power_state(root: Path = POWER_SUPPLY_DIR) -> PowerState:
    """Read the battery level and charging state, where the kernel exposes them."""
    battery: float | None = None
    charging: bool | None = None
    if not root.is_dir():
        return PowerState(None, None)
    for supply in sorted(root.iterdir()):
        kind = _read(supply / "type")
        if kind == "Battery":
            capacity = _read(supply / "capacity")
            if capacity is not None and capacity.isdigit():
                battery = float(capacity) if battery is None else min(battery, float(capacity))
            status = _read(supply / "status")
            if status in ("Charging", "Full"):
                charging = True
            elif status in ("Discharging", "Not charging") and charging is None:
                charging = False
        elif kind in ("Mains", "USB", "USB_PD", "USB_C", "Wireless"):
            if _read(supply / "online") == "1":
                charging = True
            elif charging is None:
                charging = False
    return PowerState(battery, charging)


def skip_reason(settings: GuardSettings) -> str | None:
    """Why this device should skip a round now, or None to go ahead."""
    if settings.min_battery is not None or settings.require_charging:
        power = power_state(settings.power_supply_dir)
        if settings.require_charging and power.charging is False:
            return "not charging (the agent was told to train only on external power)"
        if (
            settings.min_battery is not None
            and power.battery_percent is not None
            and power.battery_percent < settings.min_battery
            and not power.charging
        ):
            return (
                f"battery at {power.battery_percent:.0f}% and not charging "
                f"(minimum {settings.min_battery:.0f}%)"
            )
    if settings.max_memory_percent is not None:
        used = psutil.virtual_memory().percent
        if used > settings.max_memory_percent:
            return f"memory {used:.0f}% in use (ceiling {settings.max_memory_percent:.0f}%)"
    if settings.max_cpu_load is not None:
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
        if load > settings.max_cpu_load:
            return f"CPU load {load:.2f} per core (threshold {settings.max_cpu_load:.2f})"
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
