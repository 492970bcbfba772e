"""Tier student specs: parsing, building, sizes, and the [distill] config section."""

import pytest
import torch

from stamen.config import UnlabelledSource, load_config
from stamen.core.errors import ConfigError
from stamen.models import (
    ModelName,
    ModelSpec,
    StudentSpec,
    build_model,
    count_parameters,
    parse_students,
    student_spec,
)

TEACHER = ModelSpec("lenet", (1, 28, 28), num_classes=10)


def test_parse_students_reads_tiers_models_widths_and_bits() -> None:
    students = parse_students(" mcu=0.25:4 , iot=mlp@0.5, phone=1.0:8 ")
    assert [(s.tier, s.model, s.width, s.weight_bits) for s in students] == [
        ("mcu", None, 0.25, 4),
        ("iot", ModelName.MLP, 0.5, None),
        ("phone", None, 1.0, 8),
    ]
    assert parse_students("") == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mcu", "must look like TIER=\\[MODEL@\\]WIDTH\\[:BITS\\]"),
        ("mcu=abc", "needs a width > 0 and at most 1; got abc"),
        ("mcu=1.5", "needs a width > 0 and at most 1"),
        ("mcu=0.5:3", "needs BITS in 2, 4, 8; got '3'"),
        ("mcu=resnet@0.5", "names model 'resnet'; use one of lenet, mobilenet, mlp"),
        ("mcu=0.5,mcu=0.25", "tier 'mcu' has more than one student"),
    ],
)
def test_parse_students_rejects_bad_specs_in_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        parse_students(text)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("width", "min_ratio"), [(0.25, 8.0), (0.5, 3.0)])
def test_lenet_students_are_much_smaller_and_run(width: float, min_ratio: float) -> None:
    (student,) = parse_students(f"mcu={width}")
    spec = student_spec(TEACHER, student)
    model = build_model(spec, seed=0)
    teacher_params = count_parameters(build_model(TEACHER))
    assert teacher_params / count_parameters(model) >= min_ratio
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert (spec.input_shape, spec.num_classes) == (TEACHER.input_shape, TEACHER.num_classes)


def test_student_can_switch_architecture_family() -> None:
    (student,) = parse_students("mcu=mlp@0.5")
    spec = student_spec(TEACHER, student)
    assert spec.name is ModelName.MLP
    assert build_model(spec)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_distill_section_defaults_and_validation() -> None:
    config = load_config(overrides={"distill.enabled": True, "distill.students": "mcu=0.25:4"})
    assert config.distill.source is UnlabelledSource.HOLDOUT
    assert config.distill.student_specs()[0].weight_bits == 4
    assert config.to_dict()["distill"]["students"] == "mcu=0.25:4"
    with pytest.raises(ConfigError, match=r"^distill\.students: student 'mcu=2'"):
        load_config(overrides={"distill.students": "mcu=2"})
    with pytest.raises(ConfigError, match=r"^distill\.source must be one of holdout, file"):
        load_config(overrides={"distill.source": "web"})
    with pytest.raises(ConfigError, match=r"^distill\.file must be a path"):
        load_config(overrides={"distill.source": "file"})
    with pytest.raises(ConfigError, match=r"^distill\.temperature must be > 0"):
        load_config(overrides={"distill.temperature": 0})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tier": "a b", "width": 0.5}, "student tier must be letters, digits, _ or -; got 'a b'"),
        ({"tier": "mcu", "width": 0.0}, "student mcu: width must be > 0 and at most 1; got 0.0"),
        ({"tier": "mcu", "width": 0.5, "weight_bits": 16}, "weight_bits must be one of 2, 4, 8"),
        ({"tier": "mcu", "width": 0.5, "model": "resnet"}, "model must be one of lenet, mobilenet"),
    ],
)
def test_a_student_spec_built_in_python_is_checked_like_a_parsed_one(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        StudentSpec(**fields)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_student_model_given_as_a_string_becomes_its_enum_member() -> None:
    student = StudentSpec("iot", 0.5, model="mlp")
    assert student.model is ModelName.MLP
    assert student_spec(TEACHER, student).name is ModelName.MLP
