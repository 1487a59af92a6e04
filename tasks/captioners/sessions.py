"""onnxruntime sessions as every stage makes them: CPU, one thread, no spinning.

A worker runs one captioning child per pool process, so one intra-op and one
inter-op thread per session keeps a 2-process worker at 2 busy cores; the
memory arena is off so memory goes back after a large image.
"""
from __future__ import annotations

from typing import Any

THREADS = 1


def session_options() -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = THREADS
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.enable_cpu_mem_arena = False
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only
    return opts


def make_session(model: bytes | str) -> Any:
    """An inference session for a model file path or serialized model bytes."""
    import onnxruntime as ort

    return ort.InferenceSession(model, session_options(), providers=["CPUExecutionProvider"])
