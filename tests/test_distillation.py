"""Knowledge distillation maths: the KD loss, ensemble targets, the distillation loop."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from stamen.compression import DistillConfig, distill, ensemble_logits, model_logits
from stamen.compression.distillation import kd_loss
from stamen.core.errors import ConfigError
from stamen.data import load_dataset
from stamen.models import ModelSpec, build_model


def test_kd_loss_is_temperature_squared_kl_of_softened_distributions() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 4), torch.randn(5, 4)
    temperature = 2.5
    p_teacher = F.softmax(teacher / temperature, dim=1)
    p_student = F.softmax(student / temperature, dim=1)
    expected = (p_teacher * (p_teacher.log() - p_student.log())).sum(dim=1).mean()
    expected = expected * temperature**2
    assert float(kd_loss(student, teacher, temperature)) == pytest.approx(float(expected), 1e-5)


def test_kd_loss_is_zero_only_for_matching_logits_up_to_a_shift() -> None:
    logits = torch.tensor([[1.0, -2.0, 0.5]])
    assert float(kd_loss(logits + 7.0, logits, 3.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(logits.flip(1), logits, 3.0)) > 0.01


def test_kd_loss_gradient_moves_the_student_toward_the_teacher() -> None:
    teacher = torch.tensor([[3.0, 0.0, 0.0]])
    student = torch.zeros(1, 3, requires_grad=True)
    kd_loss(student, teacher, 2.0).backward()
    assert student.grad is not None
    assert student.grad[0, 0] < 0 < student.grad[0, 1]  # descent raises class 0


def test_ensemble_logits_weights_models() -> None:
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    x = torch.randn(6, 3)
    mixed = ensemble_logits([a, b], x, weights=[3.0, 1.0])
    assert torch.allclose(mixed, 0.75 * a(x) + 0.25 * b(x), atol=1e-6)
    with pytest.raises(ValueError, match="at least one model"):
        ensemble_logits([], x)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", -1.0, "temperature must be > 0"),
        ("steps", 0, "steps must be an integer >= 1"),
        ("batch_size", 2.5, "batch_size must be an integer >= 1"),
        ("lr", 0, "lr must be > 0"),
    ],
)
def test_distill_config_rejects_bad_values(field: str, value: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**{field: value})


def test_distilling_a_small_student_from_a_trained_teacher_transfers_accuracy() -> None:
    """A trained MLP teaches a quarter-width student on unlabelled digits only."""
    data = load_dataset("digits")
    x, y = torch.tensor(data.x_train), torch.tensor(data.y_train)
    x_test, y_test = torch.tensor(data.x_test), torch.tensor(data.y_test)
    spec = ModelSpec("mlp", data.input_shape, data.num_classes)
    teacher = build_model(spec, seed=0)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(teacher(x), y).backward()
        optimizer.step()
    teacher_accuracy = float((model_logits(teacher, x_test).argmax(1) == y_test).float().mean())
    student = build_model(ModelSpec("mlp", data.input_shape, data.num_classes, width=0.25), 1)
    before = float((model_logits(student, x_test).argmax(1) == y_test).float().mean())
    targets = model_logits(teacher, x)
    loss_before = float(kd_loss(model_logits(student, x), targets, 3.0))
    loss = distill(student, x, targets, DistillConfig(temperature=3.0, steps=400, lr=5e-3))
    after = float((model_logits(student, x_test).argmax(1) == y_test).float().mean())
    assert teacher_accuracy > 0.9
    assert before < 0.3
    assert loss < loss_before / 5 and math.isfinite(loss)
    assert after > 0.9 * teacher_accuracy
    assert not student.training
