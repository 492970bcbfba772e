"""Student architectures for device tiers: the teacher's family, narrower, at lower precision.

A tier's student is written ``TIER=[MODEL@]WIDTH[:BITS]``, several separated by commas:
``"mcu=0.25:4,iot=0.5"`` gives the ``mcu`` tier the teacher's architecture at a quarter of
its width with 4-bit QAT weights, and ``iot`` half the width at the federation's precision.
``MODEL`` switches the architecture family (``mlp@0.5``). Tiers without a student train the
teacher itself.

Examples:
    >>> students = parse_students("mcu=0.25:4, iot=0.5")
    >>> [(s.tier, s.width, s.weight_bits) for s in students]
    [('mcu', 0.25, 4), ('iot', 0.5, None)]
    >>> teacher = ModelSpec("lenet", (1, 28, 28), num_classes=10)
    >>> student_spec(teacher, students[0]).width
    0.25
    >>> parse_students("mcu=0")
    Traceback (most recent call last):
    ...
    stamen.core.errors.ConfigError: student 'mcu=0' needs a width > 0 and at most 1; got 0
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from stamen.core.errors import ConfigError
from stamen.models.spec import WEIGHT_BITS, ModelName, ModelSpec

_TIER = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class StudentSpec:
    """One tier's student.

    Attributes:
        tier: The device tier that runs it.
        width: Width multiplier relative to the teacher's architecture at width 1.0, (0, 1].
        weight_bits: QAT weight bits on the tier's devices (2, 4 or 8); ``None`` keeps the
            federation's QAT setting.
        model: Architecture family; ``None`` keeps the teacher's. A plain string is accepted
            and converted.

    Examples:
        >>> StudentSpec("mcu", 0.25, model="mlp").model
        <ModelName.MLP: 'mlp'>
        >>> StudentSpec("mcu", 0.25, weight_bits=3)
        Traceback (most recent call last):
        ...
        stamen.core.errors.ConfigError: student mcu: weight_bits must be one of 2, 4, 8; got 3
    """

    tier: str
    width: float
    weight_bits: int | None = None
    model: ModelName | None = None

    def __post_init__(self) -> None:
        where = f"student {self.tier}"
        if not isinstance(self.tier, str) or not _TIER.match(self.tier):
            raise ConfigError(f"student tier must be letters, digits, _ or -; got {self.tier!r}")
        width = self.width
        if isinstance(width, bool) or not isinstance(width, int | float) or not 0 < width <= 1:
            raise ConfigError(f"{where}: width must be > 0 and at most 1; got {width!r}")
        object.__setattr__(self, "width", float(width))
        bits = self.weight_bits
        if bits is not None and (isinstance(bits, bool) or bits not in WEIGHT_BITS):
            allowed = ", ".join(map(str, WEIGHT_BITS))
            raise ConfigError(f"{where}: weight_bits must be one of {allowed}; got {bits!r}")
        if self.model is not None:
            try:
                object.__setattr__(self, "model", ModelName(self.model))
            except ValueError:
                allowed = ", ".join(name.value for name in ModelName)
                raise ConfigError(
                    f"{where}: model must be one of {allowed}; got {self.model!r}"
                ) from None


def parse_students(text: str) -> tuple[StudentSpec, ...]:
    """Parse ``"TIER=[MODEL@]WIDTH[:BITS], ..."``; an empty string means no students.

    Examples:
        >>> [(s.tier, s.width, s.weight_bits) for s in parse_students("mcu=0.25:4, iot=0.5")]
        [('mcu', 0.25, 4), ('iot', 0.5, None)]
        >>> parse_students("mcu=2")
        Traceback (most recent call last):
        ...
        stamen.core.errors.ConfigError: student 'mcu=2' needs a width > 0 and at most 1; got 2
    """
    students: list[StudentSpec] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        students.append(_parse_one(item))
    tiers = [student.tier for student in students]
    duplicate = next((tier for tier in tiers if tiers.count(tier) > 1), None)
    if duplicate is not None:
        raise ConfigError(f"tier {duplicate!r} has more than one student")
    return tuple(students)


def _parse_one(item: str) -> StudentSpec:
    tier, sep, rest = item.partition("=")
    tier = tier.strip()
    if not sep or not _TIER.match(tier):
        raise ConfigError(f"student {item!r} must look like TIER=[MODEL@]WIDTH[:BITS]")
    model_text, at, rest = rest.strip().rpartition("@") if "@" in rest else ("", "", rest)
    model: ModelName | None = None
    if at:
        try:
            model = ModelName(model_text.strip())
        except ValueError:
            allowed = ", ".join(name.value for name in ModelName)
            raise ConfigError(
                f"student {item!r} names model {model_text!r}; use one of {allowed}"
            ) from None
    width_text, colon, bits_text = rest.strip().partition(":")
    try:
        width = float(width_text)
    except ValueError:
        width = -1.0
    if not 0 < width <= 1:
        raise ConfigError(
            f"student {item!r} needs a width > 0 and at most 1; got {width_text.strip()}"
        )
    bits: int | None = None
    if colon:
        if not bits_text.strip().isdigit() or int(bits_text) not in WEIGHT_BITS:
            allowed = ", ".join(map(str, WEIGHT_BITS))
            raise ConfigError(f"student {item!r} needs BITS in {allowed}; got {bits_text!r}")
        bits = int(bits_text)
    return StudentSpec(tier=tier, width=width, weight_bits=bits, model=model)


def student_spec(teacher: ModelSpec, student: StudentSpec) -> ModelSpec:
    """The student's ``ModelSpec``: the teacher's input and classes, the student's width.

    The width is relative to the architecture's full size, so a teacher built at width 1.0
    and a student at 0.25 have a quarter of the channels in every layer.

    Examples:
        >>> teacher = ModelSpec("lenet", (1, 28, 28), num_classes=10)
        >>> student = student_spec(teacher, StudentSpec("mcu", width=0.25))
        >>> student.name.value, student.input_shape, student.width
        ('lenet', (1, 28, 28), 0.25)
    """
    return ModelSpec(
        name=student.model or teacher.name,
        input_shape=teacher.input_shape,
        num_classes=teacher.num_classes,
        width=student.width,
    )
