"""The server's distillation service: build FedDF from a config, and report the models it made.

``build_feddf`` turns the ``[distill]`` section into a :class:`~stamen.strategies.FedDF`
with its unlabelled inputs and central evaluator. ``final_models`` lists what a run
produced (the global teacher and each tier's student) as saved models, and
``edge_metrics`` exports each to an INT8 ONNX artifact and measures it, for the ``tiers``
block of ``summary.json``.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stamen.client.trainer import evaluate
from stamen.compression import QATConfig
from stamen.config import StamenConfig, UnlabelledSource
from stamen.core.errors import ConfigError
from stamen.data import Dataset, file_inputs, holdout_inputs
from stamen.models import ModelSpec, SavedModel, student_spec
from stamen.strategies.feddf import FedDF, TierStudent

LOG = logging.getLogger("stamen.server")

GLOBAL_TIER = "global"
"""The key of the teacher in per-tier reports."""


def unlabelled_inputs(config: StamenConfig, dataset: Dataset) -> np.ndarray:
    """The server's unlabelled distillation inputs, as ``[distill]`` names them."""
    settings = config.distill
    if settings.source is UnlabelledSource.FILE:
        return file_inputs(Path(settings.file).expanduser(), dataset.input_shape)
    return holdout_inputs(dataset, settings.holdout_size, config.federation.seed)


def tier_students(config: StamenConfig, spec: ModelSpec) -> dict[str, TierStudent]:
    """The student of each tier named in ``distill.students``."""
    students = {}
    for student in config.distill.student_specs():
        qat = None
        if config.qat.enabled or student.weight_bits is not None:
            base = config.qat.to_qat_config()
            qat = QATConfig(
                weight_bits=student.weight_bits or base.weight_bits,
                activation_bits=base.activation_bits,
            )
        students[student.tier] = TierStudent(student_spec(spec, student), qat)
    return students


def build_feddf(config: StamenConfig, spec: ModelSpec, dataset: Dataset) -> FedDF:
    """FedDF with the federation's compression settings and the ``[distill]`` section.

    FedDF builds on compressed FedAvg, so it does not combine with another
    ``strategy.name``.
    """
    from stamen.server.federation import compressed_fedavg_args

    if config.strategy.name.value != "fedavg":
        raise ConfigError(
            "distill.enabled runs FedDF, which builds on FedAvg; strategy.name must be fedavg, "
            f"got {config.strategy.name.value!r}"
        )
    federation = config.federation
    x_test, y_test = torch.tensor(dataset.x_test), torch.tensor(dataset.y_test)

    def accuracy(model: nn.Module) -> float:
        return evaluate(model, x_test, y_test).accuracy

    return FedDF(
        teacher_spec=spec,
        unlabelled=unlabelled_inputs(config, dataset),
        distill_config=config.distill.to_distill_config(seed=federation.seed),
        students=tier_students(config, spec),
        every_k=config.distill.every_k,
        evaluate_model=accuracy,
        **compressed_fedavg_args(config, spec),
    )


def final_models(
    strategy: object, config: StamenConfig, spec: ModelSpec, global_state: dict[str, np.ndarray]
) -> list[SavedModel]:
    """The global model, and each tier's student when the strategy trained students."""
    bits = config.qat.weight_bits if config.qat.enabled else None
    models = [SavedModel(spec, global_state, None, config.data.dataset, bits)]
    if isinstance(strategy, FedDF):
        for tier, student in strategy.students.items():
            student_bits = student.qat.weight_bits if student.qat else None
            state = strategy.student_states[tier]
            models.append(SavedModel(student.spec, state, tier, config.data.dataset, student_bits))
    return models


def edge_metrics(models: list[SavedModel], dataset: Dataset) -> dict[str, dict[str, Any]]:
    """Export each model to a packed INT8 ONNX artifact and measure it in onnxruntime.

    Keys: the tier, or ``global`` for the teacher. Values: ``params``, ``sparsity``,
    ``artifact_bytes``, ``artifact_accuracy``, ``latency_ms_p50`` (batch 1, one thread),
    ``peak_memory_bytes`` (resident-memory growth of a fresh process loading and running the
    artifact) and ``fp32_accuracy`` (the PyTorch model). Empty when the ``export`` extra is
    not installed.
    """
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from stamen.export import export_model, measure_onnx, peak_inference_bytes, unpack
    except ImportError:
        LOG.warning("edge metrics need the export extra: pip install 'stamen[export]'")
        return {}
    key = Ed25519PrivateKey.generate()  # throwaway: these artifacts are measured, not shipped
    metrics: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for saved in models:
            tier = saved.tier or GLOBAL_TIER
            result = export_model(saved, Path(tmp), key, dataset=dataset.name, name=tier)
            onnx_bytes = unpack(result.artifact.read_bytes())
            measured = measure_onnx(onnx_bytes, dataset.x_test, dataset.y_test)
            manifest = result.manifest
            metrics[tier] = {
                "params": manifest["model"]["params"],
                "sparsity": manifest["model"]["sparsity"],
                "width": manifest["model"]["width"],
                "artifact_bytes": manifest["bytes"],
                "fp32_onnx_bytes": manifest["fp32_onnx_bytes"],
                "artifact_accuracy": measured.accuracy,
                "fp32_accuracy": manifest["accuracy"]["fp32_torch"],
                "fake_quant_accuracy": manifest["accuracy"]["fake_quant_torch"],
                "latency_ms_p50": measured.latency_ms_p50,
                "peak_memory_bytes": peak_inference_bytes(onnx_bytes, dataset.x_test),
            }
    return metrics
