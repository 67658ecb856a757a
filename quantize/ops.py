"""What is inside a .tflite model: every operator with the dtypes of its tensors.

The proof that a model is full-integer is this list: an operator that reads or
writes a float (or int16) tensor is not int8, and is named in the report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from .tflite_eval import ModelSource, make_interpreter

# int32 is the bias/shape/index type of an int8 model; uint8 appears only at uint8 I/O.
INTEGER_OK = {"int8", "uint8", "int32", "int64", "bool"}


@dataclass(frozen=True)
class OpInfo:
    index: int
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def is_int8(self) -> bool:
        return all(d in INTEGER_OK for d in self.inputs + self.outputs)

    def describe(self) -> str:
        return f"#{self.index} {self.op}({', '.join(self.inputs)}) -> {', '.join(self.outputs)}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["inputs"], d["outputs"] = list(self.inputs), list(self.outputs)
        return d


def list_ops(model: ModelSource) -> list[OpInfo]:
    """Every operator of the main graph in execution order, without delegate nodes."""
    it = make_interpreter(model, delegates=False)
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in it.get_tensor_details()}
    ops = []
    for op in it._get_ops_details():  # the public Analyzer only prints; this gives the same data as values
        ins = tuple(dtypes[i] for i in op["inputs"] if i >= 0)
        outs = tuple(dtypes[i] for i in op["outputs"] if i >= 0)
        ops.append(OpInfo(int(op["index"]), str(op["op_name"]), ins, outs))
    return ops


def non_int8_ops(ops: list[OpInfo]) -> list[OpInfo]:
    return [o for o in ops if not o.is_int8]


def op_counts(ops: list[OpInfo]) -> dict[str, int]:
    return dict(sorted(Counter(o.op for o in ops).items()))
