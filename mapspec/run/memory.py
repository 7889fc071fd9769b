"""A spec applied to a state dict in memory: `mapspec.remap(spec, model.state_dict())`.

Tensors the spec only renames are handed back as the very objects it was given (no copy);
tensors with actions are computed through numpy views where the action allows and come back
as the type they came in (torch tensors on their device and dtype, bf16 included; numpy
arrays as numpy arrays)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..core.lazy import numpy as np

from ..core import dtypes
from ..errors import UsageError
from .executor import run_step
from ..compile.params import Config
from ..formats.selection import select as select_names
from ..compile.plan import Plan, TensorInfo, compile_spec
from ..lang.rules import Spec


def _is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def tensor_info(value: Any) -> TensorInfo:
    """Name, shape and dtype of a torch tensor or a numpy array (ml_dtypes bfloat16 too)."""
    if _is_torch(value):
        found = dtypes.of_torch(str(value.dtype).removeprefix("torch."), tuple(value.shape))
        if found is None:
            raise UsageError(f"unsupported tensor dtype {value.dtype}")
        return TensorInfo(*found)
    if isinstance(value, np.ndarray):
        if value.dtype.name == "bfloat16" or value.dtype.name in dtypes.LOW_PRECISION:
            return TensorInfo(value.shape, value.dtype.name)
        try:
            return TensorInfo(value.shape, dtypes.of_array(value))
        except TypeError as exc:
            raise UsageError(str(exc)) from None
    raise UsageError(f"not a tensor: {type(value).__name__} (remap takes torch tensors or numpy arrays)")


def _bits(value: Any, info: TensorInfo) -> np.ndarray:
    """The array as the executor sees it: numpy, bf16 as uint16 bits, sharing memory."""
    if _is_torch(value):
        import torch

        t = value.detach().cpu()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16)
        if info.dtype in dtypes.LOW_PRECISION:  # their bits; float4 as one code per value
            stored = t.contiguous().view(torch.uint8).numpy()
            return dtypes.from_raw(stored.reshape(-1), info.shape, info.dtype)
        return t.numpy()
    if info.dtype in dtypes.LOW_PRECISION:
        return dtypes.stored(value, info.dtype)
    return value.view(np.uint16) if info.dtype == "bfloat16" else value


def _back(array: np.ndarray, dtype: str, like: Any) -> Any:
    """An executor result as the type of `like` (a torch tensor keeps its device)."""
    if _is_torch(like):
        from ..formats.torch import to_torch

        # Actions may return read-only views of the input; torch wants its own writable memory.
        if not array.flags.writeable:
            array = array.copy()
        return to_torch(array, dtype).to(like.device)
    if (dtype == "bfloat16" or dtype in dtypes.LOW_PRECISION) and like.dtype.kind == "V":
        return dtypes.values(np.ascontiguousarray(array), dtype)  # ml_dtypes in, ml_dtypes out
    return array


def run_plan(plan: Plan, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Every output of `plan` from the in-memory `tensors` it was compiled against."""
    out: dict[str, Any] = {}
    for step in plan.steps:
        if not step.actions and len(step.inputs) == 1:
            out[step.output] = tensors[step.inputs[0]]  # a rename: the same object
            continue
        arrays = [_bits(tensors[k], i) for k, i in zip(step.inputs, step.input_infos)]
        out[step.output] = _back(run_step(step, arrays), step.info.dtype, tensors[step.inputs[0]])
    return out


def remap_tensors(spec: Spec, state_dict: Mapping[str, Any], select: str | None,
           params: Mapping[str, Any] | None = None, config: Config = None) -> tuple[Plan, dict[str, Any]]:
    names = select_names(state_dict, select, Path(spec.file)) if select else {k: k for k in state_dict}
    tensors = {k: state_dict[v] for k, v in names.items()}
    plan = compile_spec(spec, {k: tensor_info(v) for k, v in tensors.items()}, params=params, config=config)
    return plan, run_plan(plan, tensors)
