"""Strip an INT8 QDQ ONNX graph down to what a device needs, without changing what it computes.

onnxruntime's quantizer writes a graph meant for reading: long tensor names, doc strings,
shape annotations, and every quantization parameter as its own initializer. On a small
model that is several percent of the file. ``compact`` removes it:

- tensor names become one or two characters (the graph's input and output keep theirs),
  node names, doc strings, shape annotations and unused opset imports go;
- a bias's int32 scale, which the quantizer always sets to ``input scale * weight scale``,
  is computed by a ``Mul`` of those two initializers instead of being stored (onnxruntime
  folds it at load, before it fuses the integer kernels), and the all-zero int32 bias zero
  point, which ``DequantizeLinear`` defaults to, is dropped;
- initializers are ordered by size, which the packer's LZMA compresses slightly better.

The fused integer kernels (``QLinearConv``, ``QGemm``) and the outputs are unchanged; the
export tests check both.
"""

from __future__ import annotations

import string

import numpy as np
import onnx
from onnx import helper, numpy_helper

_FIRST = string.ascii_letters
_REST = string.ascii_letters + string.digits


def compact(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return ``model``, trimmed in place as the module docstring describes."""
    _derive_bias_scales(model.graph)
    _rename_tensors(model.graph)
    _drop_unused_initializers(model.graph)
    graph = model.graph
    for node in graph.node:
        node.name = ""
        node.doc_string = ""
    for initializer in graph.initializer:
        initializer.doc_string = ""
    del graph.value_info[:]
    graph.name = "g"  # a graph must be named
    graph.doc_string = ""
    model.doc_string = ""
    model.producer_name = ""
    model.producer_version = ""
    used_domains = {""} | {node.domain for node in graph.node}
    kept = [opset for opset in model.opset_import if opset.domain in used_domains]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    del model.metadata_props[:]
    return model


def short_name(index: int) -> str:
    """The ``index``-th short tensor name: ``a`` .. ``Z``, then ``aa``, ``ba``, ...

    Examples:
        >>> [short_name(i) for i in (0, 51, 52, 53)]
        ['a', 'Z', 'aa', 'ba']
    """
    name = _FIRST[index % len(_FIRST)]
    index //= len(_FIRST)
    while index:
        index -= 1
        name += _REST[index % len(_REST)]
        index //= len(_REST)
    return name


def _derive_bias_scales(graph: onnx.GraphProto) -> None:
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    consumers = {name: node for node in graph.node for name in node.input}
    derived: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in initializers:
            continue
        if initializers[node.input[0]].data_type != onnx.TensorProto.INT32:
            continue
        layer = consumers.get(node.output[0])
        if layer is None or len(layer.input) < 3 or layer.input[2] != node.output[0]:
            continue
        x_dq, w_dq = producers.get(layer.input[0]), producers.get(layer.input[1])
        if x_dq is None or w_dq is None or node.input[1] not in initializers:
            continue
        x_scale, w_scale = (initializers.get(dq.input[1]) for dq in (x_dq, w_dq))
        if x_scale is None or w_scale is None:
            continue
        stored = numpy_helper.to_array(initializers[node.input[1]])
        product = numpy_helper.to_array(x_scale) * numpy_helper.to_array(w_scale)
        if stored.dtype != product.dtype or not np.array_equal(stored, product):
            continue  # only what the Mul reproduces bit for bit
        scale = f"{node.input[1]}.derived"
        derived.append(helper.make_node("Mul", [x_scale.name, w_scale.name], [scale]))
        node.input[1] = scale
        zero_point = node.input[2] if len(node.input) == 3 else ""
        if zero_point in initializers and not numpy_helper.to_array(initializers[zero_point]).any():
            del node.input[2]
    if derived:
        nodes = [*derived, *graph.node]
        del graph.node[:]
        graph.node.extend(nodes)


def _rename_tensors(graph: onnx.GraphProto) -> None:
    keep = {value.name for value in [*graph.input, *graph.output]}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, short_name(len(names)))

    for initializer in graph.initializer:
        initializer.name = short(initializer.name)
    for node in graph.node:
        node.input[:] = [short(name) for name in node.input]
        node.output[:] = [short(name) for name in node.output]


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    kept = sorted(
        (tensor for tensor in graph.initializer if tensor.name in used),
        key=lambda tensor: tensor.ByteSize(),
    )
    del graph.initializer[:]
    graph.initializer.extend(kept)
