"""Several devices' models trained as one: every layer stacked across the devices, grouped.

A device update of a small edge model is a few hundred small kernels, and on a CPU their
fixed costs weigh as much as their arithmetic. :class:`GroupedStack` computes K devices'
copies of one model as one model: it traces the model once (``torch.fx``) and runs each
layer for all devices at once, device ``k`` from its own weights and inputs only:

- image activations live as ``(B, K*C, H, W)``, channels-last, device ``k`` owning channels
  ``k*C .. (k+1)*C - 1``: a convolution becomes one grouped convolution (``groups`` times K),
  a BatchNorm one BatchNorm over ``K*C`` channels (so each device normalises with its own
  batch statistics and keeps its own running statistics), pooling and ReLU are unchanged;
- feature activations live as ``(K, B, F)``: a linear layer becomes one batched matmul.

Each layer type and function has a rule (:data:`LAYER_RULES`, :data:`FUNCTION_RULES`): the
float layers and functions in :mod:`stamen.models.stacked_layers`, the quantization-aware
layers in :mod:`stamen.compression.stacked_qat`. A model with a layer or function no rule knows does
not stack here (:class:`NotStackable`); :class:`~stamen.models.vmap_stack.VmapStack` and then
one device at a time take it.

Results match one-device-at-a-time training to float rounding, not bit for bit: the kernels
sum in a different order.
"""

from __future__ import annotations

import enum
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from stamen.models.state import exchanged_state


class NotStackable(ValueError):
    """The model has a layer or an operation that :class:`GroupedStack` cannot group."""


class Layout(enum.Enum):
    """How K devices' activations share one tensor."""

    CHANNELS = "channels"
    """``(B, K*C, ...)``: device k owns channels ``k*C .. (k+1)*C - 1``."""
    DEVICES = "devices"
    """``(K, B, ...)``: device k owns row ``k``."""


@dataclass
class Activation:
    """A value of the traced model, for all K devices."""

    tensor: torch.Tensor
    layout: Layout
    count: int
    """K, the number of devices."""

    def like(self, tensor: torch.Tensor) -> Activation:
        """``tensor`` in this value's layout."""
        return Activation(tensor, self.layout, self.count)


@dataclass(frozen=True)
class StackedTensor:
    """One exchanged tensor of every device, device-major: ``tensor.reshape(K, *shape)``."""

    name: str
    tensor: torch.Tensor
    shape: tuple[int, ...]


class DeviceStack(Protocol):
    """What :func:`stamen.client.trainer.train_stacked` trains: K devices' models as one."""

    count: int
    batch_coupled: bool
    """A device's outputs depend on the other rows of its batch (BatchNorm's batch
    statistics): every device must then train on batches of exactly its own rows."""

    def parameters(self) -> list[torch.Tensor]:
        """The trained leaf tensors, device-major: ``reshape(K, -1)`` splits the devices."""
        ...

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(K, B, classes)`` of inputs ``(K, B, *sample)``."""
        ...

    def device_states(self) -> list[dict[str, np.ndarray]]:
        """Each device's exchanged state, as :func:`~stamen.models.exchanged_state` gives it
        for that device's model."""
        ...


@dataclass(frozen=True)
class StackContext:
    """What a layer rule may need beyond its layers: the devices' models and where the
    stacked tensors live."""

    models: Sequence[nn.Module]
    device: torch.device

    @property
    def count(self) -> int:
        """K, the number of devices."""
        return len(self.models)

    def path_of(self, module: nn.Module) -> str:
        """Where ``module`` sits in the first device's model (``"blocks.0.1"``)."""
        for path, candidate in self.models[0].named_modules():
            if candidate is module:
                return path
        raise NotStackable(f"{type(module).__name__} is not part of the model")

    def stack(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """K devices' copies of one tensor, concatenated along its first dimension (a scalar
        becomes one entry per device), on this stack's device."""
        first = tensors[0]
        if first.dim() == 0:
            tensors = [t.reshape(1) for t in tensors]
            first = tensors[0]
        if all(t is first for t in tensors):  # one starting model: no K separate copies
            stacked = first.detach().repeat(len(tensors), *([1] * (first.dim() - 1)))
        else:
            stacked = torch.cat([t.detach() for t in tensors])
        return stacked.to(device=self.device)  # repeat and cat made it a new tensor


class StackedLayer:
    """One layer of every device, run as one; subclasses are the rules for layer types.

    Args:
        layers: The K devices' copies of the layer (the same object K times when the devices
            start from one model).
        name: The layer's path in the model (``"blocks.0.3"``), which prefixes its tensors'
            exchanged names.
        context: The devices' models and where the stacked tensors live.
    """

    batch_coupled: ClassVar[bool] = False

    def __init__(self, layers: Sequence[nn.Module], name: str, context: StackContext) -> None:
        self.count = len(layers)
        self.name = name

    def __call__(self, x: Activation) -> Activation:
        raise NotImplementedError

    def trained(self) -> list[torch.Tensor]:
        """The leaf tensors SGD updates."""
        return []

    def exchanged(self) -> list[StackedTensor]:
        """The tensors this layer contributes to a device's exchanged state."""
        return []


LayerRule = Callable[[Sequence[nn.Module], str, StackContext], StackedLayer]
"""Builds the stacked form of K copies of a layer type, given the layers and their path."""

LAYER_RULES: dict[type[nn.Module], LayerRule] = {}
"""Stacked forms by exact layer type (a subclass may compute something else)."""

FunctionRule = Callable[..., Activation]
"""Applies a traced function or method to K devices' activations: ``rule(target, *args,
**kwargs)`` with :class:`Activation` in place of tensors."""

FUNCTION_RULES: dict[Any, FunctionRule] = {}
"""Rules for ``call_function`` targets (``F.relu``) and ``call_method`` names (``"relu"``)."""


def tensor_of(module: nn.Module, name: str) -> torch.Tensor:
    """``module``'s tensor attribute ``name`` (a parameter or buffer)."""
    value = getattr(module, name, None)
    if not isinstance(value, torch.Tensor):
        raise NotStackable(f"{type(module).__name__} has no tensor {name!r}")
    return value


def leaf(tensor: torch.Tensor) -> torch.Tensor:
    """A trainable leaf holding ``tensor``."""
    return tensor.detach().requires_grad_(True)


class _LeafTracer(torch.fx.Tracer):
    """Treats every layer with a stacking rule as one call; traces through the others."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type(m) in LAYER_RULES or super().is_leaf_module(m, module_qualified_name)


_TRACES: weakref.WeakKeyDictionary[nn.Module, list[torch.fx.Node]] = weakref.WeakKeyDictionary()
_NAMES: weakref.WeakKeyDictionary[nn.Module, list[str]] = weakref.WeakKeyDictionary()


def _traced(model: nn.Module) -> list[torch.fx.Node]:
    """The model's traced nodes, each ReLU before a max-pool moved after it; traced once per
    model object (a round's model serves every training group of the round)."""
    nodes = _TRACES.get(model)
    if nodes is None:
        try:
            graph = _LeafTracer().trace(model)
        except Exception as error:  # symbolic tracing fails on data-dependent Python code
            raise NotStackable(f"cannot trace {type(model).__name__}: {error}") from error
        _pool_before_relu(graph, model)
        nodes = _TRACES[model] = list(graph.nodes)
    return nodes


def _exchanged_names(model: nn.Module) -> list[str]:
    names = _NAMES.get(model)
    if names is None:
        names = _NAMES[model] = sorted(exchanged_state(model))
    return names


def _pool_before_relu(graph: torch.fx.Graph, model: nn.Module) -> None:
    """Rewrite ``max_pool(relu(x))`` as ``relu(max_pool(x))``: the same values and gradients
    (max-pooling commutes with any non-decreasing function), with the ReLU and its backward
    on a quarter of the elements for 2x2 pooling."""

    def is_a(node: torch.fx.Node, functions: tuple[Any, ...], modules: tuple[type, ...]) -> bool:
        if node.op in ("call_function", "call_method"):
            return node.target in functions
        return node.op == "call_module" and type(model.get_submodule(str(node.target))) in modules

    for pool in list(graph.nodes):
        if not is_a(pool, (F.max_pool2d,), (nn.MaxPool2d,)) or not pool.args:
            continue
        relu = pool.args[0]
        if (
            not isinstance(relu, torch.fx.Node)
            or not is_a(relu, (F.relu, torch.relu, "relu"), (nn.ReLU,))
            or len(relu.users) != 1
            or not relu.args
        ):
            continue
        pool.replace_all_uses_with(relu)
        pool.args = (relu.args[0], *pool.args[1:])
        relu.args = (pool, *relu.args[1:])
        pool.append(relu)


class GroupedStack:
    """K devices' copies of one model trained as one, every layer grouped.

    Args:
        models: The devices' models, all of one architecture (and QAT and pruning setup).
        device: Where the stacked tensors live (``"cpu"``, or ``"cuda"`` for a GPU).

    Raises:
        NotStackable: Some layer or operation of the model has no rule.

    Examples:
        >>> import torch
        >>> from stamen.models import ModelSpec, build_model
        >>> spec = ModelSpec("lenet", (1, 28, 28), num_classes=10)
        >>> models = [build_model(spec, seed=s) for s in range(3)]
        >>> stacked = GroupedStack(models)
        >>> x = torch.randn(3, 5, 1, 28, 28)
        >>> together = stacked.forward(x)
        >>> alone = models[1](x[1])
        >>> together.shape, bool(torch.allclose(together[1], alone, atol=1e-5))
        (torch.Size([3, 5, 10]), True)
    """

    def __init__(self, models: Sequence[nn.Module], device: torch.device | str = "cpu") -> None:
        if not models:
            raise NotStackable("no models to stack")
        self.count = len(models)
        self.device = torch.device(device)
        template = models[0]
        self._nodes = _traced(template)
        self._layers: dict[str, StackedLayer] = {}
        context = StackContext(models, self.device)
        for node in self._nodes:
            if node.op == "call_module":
                target = str(node.target)
                layers = [model.get_submodule(target) for model in models]
                rule = LAYER_RULES.get(type(layers[0]))
                if rule is None:
                    raise NotStackable(f"no stacked form of {type(layers[0]).__name__} ({target})")
                with torch.no_grad():
                    self._layers[target] = rule(layers, target, context)
            elif node.op == "get_attr":
                raise NotStackable(f"the model reads {node.target} directly")
            elif node.op in ("call_function", "call_method") and node.target not in FUNCTION_RULES:
                name = getattr(node.target, "__name__", node.target)
                raise NotStackable(f"no stacked form of {name}")
        self.batch_coupled = any(layer.batch_coupled for layer in self._layers.values())
        names = sorted(t.name for layer in self._layers.values() for t in layer.exchanged())
        if names != _exchanged_names(template):
            raise NotStackable("the traced layers do not hold exactly the model's tensors")

    @classmethod
    def replicate(cls, model: nn.Module, count: int, device: torch.device | str = "cpu") -> Self:
        """``count`` devices that all start from ``model`` (a round's global model)."""
        return cls([model] * count, device)

    def layer(self, name: str) -> StackedLayer:
        """The stacked form of the model's layer at ``name`` (``"blocks.0.3"``)."""
        return self._layers[name]

    def parameters(self) -> list[torch.Tensor]:
        """The stacked leaf tensors, for an optimizer: per-device SGD is elementwise."""
        return [t for layer in self._layers.values() for t in layer.trained()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(K, B, classes)`` of inputs ``(K, B, *sample)``, device ``k`` on model ``k``."""
        values: dict[torch.fx.Node, Any] = {}
        result: Any = None
        for node in self._nodes:
            if node.op == "placeholder":
                values[node] = to_grouped(x)
            elif node.op == "call_module":
                values[node] = self._layers[str(node.target)](values[_node(node.args[0])])
            elif node.op in ("call_function", "call_method"):
                args = torch.fx.node.map_arg(node.args, values.__getitem__)
                kwargs = torch.fx.node.map_arg(node.kwargs, values.__getitem__)
                values[node] = FUNCTION_RULES[node.target](node.target, *args, **kwargs)
            elif node.op == "output":
                result = values[_node(node.args[0])]
        if not isinstance(result, Activation) or result.layout is not Layout.DEVICES:
            raise NotStackable("the model's output is not a batch of feature vectors")
        return result.tensor

    @torch.no_grad()
    def device_states(self) -> list[dict[str, np.ndarray]]:
        """Each device's trained tensors, named and shaped as
        :func:`~stamen.models.exchanged_state` names them for its model."""
        states: list[dict[str, np.ndarray]] = [{} for _ in range(self.count)]
        for layer in self._layers.values():
            for stacked in layer.exchanged():
                values = stacked.tensor.detach().float().reshape(self.count, *stacked.shape)
                arrays = values.cpu().contiguous().numpy()
                for k, state in enumerate(states):
                    state[stacked.name] = arrays[k]
        return states


def _node(argument: object) -> torch.fx.Node:
    if not isinstance(argument, torch.fx.Node):
        raise NotStackable("a layer or output that is not a traced value")
    return argument


def to_grouped(x: torch.Tensor) -> Activation:
    """Inputs ``(K, B, *sample)`` in the layout their first layer takes: images
    ``(B, K*C, H, W)`` channels-last, anything else ``(K, B, ...)``."""
    count, batch = x.shape[0], x.shape[1]
    if x.dim() != 5:
        return Activation(x, Layout.DEVICES, count)
    grouped = x.transpose(0, 1).reshape(batch, count * x.shape[2], *x.shape[3:])
    grouped = grouped.contiguous(memory_format=torch.channels_last)
    return Activation(grouped, Layout.CHANNELS, count)
