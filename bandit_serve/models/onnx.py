"""Arms of kind ``onnx``: an ONNX file run by onnxruntime (``bandit-serve[onnx]``).

The model's one input tensor gives the contract: its element type, and its shape with
the first axis taken as the batch axis (``[None, 4]``: one row of 4 numbers, or a list
of rows). The prediction is the model's first output, one entry per row: for a one-row
request the entry, for a list of rows the list (a scikit-learn classifier converted by
skl2onnx: the label, as ``estimator.predict`` gives it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bandit_serve.config.models import OnnxModel
from bandit_serve.models.base import LocalModel
from bandit_serve.models.contract import InputContract

__all__ = ["ONNX_TYPES", "OnnxArm"]

log = logging.getLogger("bandit_serve")

# onnxruntime's type names -> the contract's element types (numpy's names)
ONNX_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


class OnnxArm(LocalModel):
    """An onnxruntime session over one ONNX file."""

    def __init__(self, ref: OnnxModel) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError(
                'ONNX arms need onnxruntime: pip install "bandit-serve[onnx]"'
            ) from None
        path = Path(ref.path)
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist")
        available = ort.get_available_providers()
        providers = [p for p in ref.providers if p in available]
        if not providers:
            raise ValueError(
                f"none of the providers {', '.join(ref.providers)} is available here "
                f"(available: {', '.join(available)})"
            )
        skipped = [p for p in ref.providers if p not in available]
        if skipped:
            log.warning("%s: providers not available here, skipped: %s", path, skipped)
        self.session = ort.InferenceSession(str(path), providers=providers)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise ValueError(
                f"{path} has {len(inputs)} inputs ({names}); ONNX arms take models with one"
            )
        spec = inputs[0]
        dtype = ONNX_TYPES.get(spec.type)
        if dtype is None:
            raise ValueError(f"{path}: input {spec.name!r} is a {spec.type}, not a tensor")
        dims = [d if isinstance(d, int) and d > 0 else None for d in spec.shape]
        if not dims:
            raise ValueError(f"{path}: input {spec.name!r} is a scalar; a batch axis is needed")
        self.input_name: str = spec.name
        self.output_name: str = self.session.get_outputs()[0].name
        self.dtype = np.dtype(object) if dtype == "string" else np.dtype(dtype)
        self._contract = InputContract(shape=tuple(dims[1:]), dtype=dtype, rows=dims[0])
        self.item_rank = len(dims) - 1

    def contract(self) -> InputContract:
        return self._contract

    def _rows(self, inputs: Any) -> tuple[np.ndarray[Any, Any], bool]:
        """The request as an array with the batch axis, and whether it was one item."""
        x = np.asarray(inputs, dtype=self.dtype)
        single = x.ndim == self.item_rank
        return (x[np.newaxis] if single else x), single

    def _run(self, x: np.ndarray[Any, Any]) -> list[Any]:
        (y,) = self.session.run([self.output_name], {self.input_name: x})
        return list(y.tolist() if isinstance(y, np.ndarray) else y)

    def predict(self, inputs: Any) -> Any:
        x, single = self._rows(inputs)
        out = self._run(x)
        return out[0] if single else out

    def predict_many(self, batch: Sequence[Any]) -> list[Any]:
        """The requests' rows stacked into one session call (when their item shapes agree
        and the model's batch axis is free), and split again."""
        if not batch:
            return []
        arrays = [self._rows(b) for b in batch]
        shapes = {x.shape[1:] for x, _ in arrays}
        if self._contract.rows is not None or len(shapes) != 1:
            return [self.predict(b) for b in batch]
        out = self._run(np.concatenate([x for x, _ in arrays]))
        answers, start = [], 0
        for x, single in arrays:
            n = x.shape[0]
            answers.append(out[start] if single else out[start : start + n])
            start += n
        return answers
