"""dequantize() and quantize(): block-scaled low-precision weights to and from full precision.

- `dequantize(fp8, block=(BM, BN), dtype=bfloat16, over=PART)`: a float8 weight `(..., R, C)`
  and its `weight_scale_inv` `(..., ceil(R/BM), ceil(C/BN))` (float32, or E8M0) -> the weight
  in `dtype` (`fp8.dequantize`).
- `quantize(fp8, block=(BM, BN), scale=float32|e8m0, into=PART)`: a bf16/fp16/fp32 weight ->
  its float8_e4m3fn weight and `weight_scale_inv` (`fp8.quantize`, transformers' Fp8Quantize
  arithmetic).
- `dequantize(mxfp4, dtype=bfloat16, over=PART)`: gpt-oss experts' `*_blocks` `(E, N, G, 16)`
  and `*_scales` `(E, N, G)` -> `(E, 32 G, N)`, as transformers' `convert_moe_packed_tensors`.
- `quantize(mxfp4, into=PART)`: `(E, K, N)` -> blocks and scales.

A merge's inputs come in the order of the `over=` capture's alternatives (the weight first,
then its scales), a split's outputs in the order of `into=`'s. Shapes and dtypes are checked
when the spec is compiled: a scale grid that does not fit its weight is an error naming both,
before anything is read. Neither direction is exact in bits (a requantized block may pick
another scale), so each declares its loss; `verify` measures it."""

from __future__ import annotations

from ..core import dtypes
from ..errors import PlanError, SpecError
from ..lang.rules import Action, Text, Word
from .args import bind, capture_name, format_shape, integers, show
from .base import ActionDef, Params, PlannedAction, Rows, Typed, make, planned

SCHEMES = ("fp8", "mxfp4")
FP8_WEIGHTS = ("float8_e4m3fn", "float8_e5m2")
FP8_SCALES = ("float32", "bfloat16", "float8_e8m0fnu")
WIDE = ("bfloat16", "float16", "float32")
DEFAULT_BLOCK = (128, 128)
QUANTIZATION_CONFIG = "quantization_config"


def _word(action: Action, bound: dict, key: str, allowed, default=None) -> str:
    if key not in bound:
        if default is None:
            raise SpecError(f"{action.name}() needs {key}= (one of {', '.join(allowed)})", action.span)
        return default
    value = bound[key]
    # a word as written, or the text of a str parameter (`param scale: str = "e8m0"`)
    name = value.name if isinstance(value, Word) else value.value if isinstance(value, Text) else None
    if key == "dtype" and name is not None:
        name = dtypes.canonical(name)
    if name not in allowed:
        raise SpecError(f"{action.name}(): {key} must be one of {', '.join(allowed)}, not {show(value)}",
                        action.span)
    return name


def _block(action: Action, bound: dict) -> list[int]:
    if "block" not in bound:
        return list(DEFAULT_BLOCK)
    block = integers(action, bound["block"], "block")
    if len(block) != 2 or min(block) <= 0:
        raise SpecError(f"{action.name}(): block must be two positive sizes such as (128, 128), "
                        f"not {show(bound['block'])}", action.span)
    return block


def _scheme(action: Action) -> str:
    if not action.args or not isinstance(action.args[0], Word) or action.args[0].name not in SCHEMES:
        got = show(action.args[0]) if action.args else "nothing"
        raise SpecError(f"{action.name}() takes a scheme first: {action.name}(fp8, ...) or {action.name}(mxfp4, ...), "
                        f"got {got}", action.span)
    return action.args[0].name


def _loss(pa: PlannedAction, what: str, inverse: list[PlannedAction]) -> tuple[str, list[PlannedAction]]:
    return (f"{pa.name}({pa.params['scheme']}) {what}", inverse)


class Dequantize(ActionDef):
    name = "dequantize"
    kind = "merge"
    names_inputs = True  # "the scale grid does not fit": of which weight
    needs = "the quantized tensors' dtypes"
    dtype_only = True  # its inverse (quantize with the same block) is the same for every shape

    def normalize(self, action: Action) -> Params:
        scheme = _scheme(action)
        if scheme == "fp8":
            bound = bind(action, ["scheme", "block", "dtype", "over"], 1)
            return {"scheme": scheme, "block": _block(action, bound), "dtype": _word(action, bound, "dtype", WIDE, "bfloat16"),
                    "over": capture_name(action, bound, "over")}
        bound = bind(action, ["scheme", "dtype", "over"], 1)
        return {"scheme": scheme, "dtype": _word(action, bound, "dtype", WIDE, "bfloat16"),
                "over": capture_name(action, bound, "over")}

    def infer(self, p: Params, inputs: list[Typed], action: Action) -> tuple[list[Typed], Params]:
        names = ("weight", "scale") if p["scheme"] == "fp8" else ("blocks", "scales")
        if len(inputs) != 2:
            raise PlanError(f"dequantize({p['scheme']}) takes the {names[0]} and its {names[1]} "
                            f"(over= their capture), got {len(inputs)} tensor{'s' if len(inputs) != 1 else ''}",
                            action.span)
        first, second = inputs
        if p["scheme"] == "fp8":
            from .fp8 import grid

            if first.dtype not in FP8_WEIGHTS or second.dtype not in FP8_SCALES:
                raise PlanError(f"dequantize(fp8) takes a float8 weight and its scales ({', '.join(FP8_SCALES)}), "
                                f"got {first.dtype} and {second.dtype}", action.span)
            if len(first.shape) < 2:
                raise PlanError(f"dequantize(fp8): a weight of shape {format_shape(first.shape)} has no blocks",
                                action.span)
            expected = grid(tuple(first.shape), tuple(p["block"]))
            if tuple(second.shape) != expected:
                raise PlanError(f"dequantize(fp8): the scale grid {format_shape(second.shape)} does not fit the weight "
                                f"of shape {format_shape(first.shape)} in {p['block'][0]}x{p['block'][1]} blocks "
                                f"(it needs {format_shape(expected)})", action.span)
            return [Typed(tuple(first.shape), p["dtype"])], {**p, "weight": first.dtype, "scale": second.dtype}
        from .mxfp4 import BYTES, dequantized_shape

        if first.dtype != "uint8" or second.dtype != "uint8":
            raise PlanError(f"dequantize(mxfp4) takes uint8 blocks and uint8 scales, got {first.dtype} and "
                            f"{second.dtype}", action.span)
        if len(first.shape) != 4 or first.shape[-1] != BYTES or tuple(second.shape) != tuple(first.shape[:-1]):
            raise PlanError(f"dequantize(mxfp4): blocks {format_shape(first.shape)} and scales "
                            f"{format_shape(second.shape)} do not fit (they must be (E, N, G, {BYTES}) and (E, N, G))",
                            action.span)
        return [Typed(dequantized_shape(tuple(first.shape)), p["dtype"])], dict(p)

    def rows(self, p: Params, inputs: list[Typed]) -> Rows | None:
        # A 2-D FP8 weight: bm rows and their one row of scales; stacked experts (FP8 of three
        # or more dimensions, MXFP4's (E, N, G, 16) blocks and (E, N, G) scales): one expert.
        if p["scheme"] == "fp8" and len(inputs[0].shape) == 2:
            return Rows((p["block"][0], 1), p["block"][0])
        return Rows((1, 1), 1)

    def run(self, p: Params, arrays: list) -> list:
        from . import fp8, mxfp4

        first, second = arrays
        if p["scheme"] == "fp8":
            return [fp8.dequantize(first, second, tuple(p["block"]), p["dtype"], p["weight"], p["scale"])]
        return [mxfp4.dequantize(first, second, p["dtype"])]

    def loss(self, pa: PlannedAction) -> tuple[str, list[PlannedAction]] | None:
        p = pa.params
        scale = "e8m0" if p.get("scale") == "float8_e8m0fnu" else "float32"
        back = {"scheme": p["scheme"], **({"block": p["block"], "scale": scale} if p["scheme"] == "fp8" else {})}
        return _loss(pa, "is undone by quantizing again, which may choose other scales: the values come back "
                         "within the quantization's rounding, not bit for bit",
                     [planned("quantize", [back], [Typed(t.shape, t.dtype) for t in pa.outputs])])

    def config(self, p: Params) -> tuple[dict, frozenset]:
        return {}, frozenset({QUANTIZATION_CONFIG})

    def written(self, pa: PlannedAction, axis: str | None, span=None) -> Action:
        p = pa.params
        if p["scheme"] == "fp8":
            return make("dequantize", "fp8", block=tuple(p["block"]), dtype=p["dtype"], over=axis, span=span)
        return make("dequantize", "mxfp4", dtype=p["dtype"], over=axis, span=span)

    def display(self, pa: PlannedAction, index: bool = True) -> str:
        p = pa.params
        block = f", block={tuple(p['block'])}" if p["scheme"] == "fp8" else ""
        return f"dequantize({p['scheme']}{block}, dtype={p['dtype']})"


class Quantize(ActionDef):
    name = "quantize"
    kind = "split"
    needs = "the full-precision tensor's dtype"
    dtype_only = True

    def normalize(self, action: Action) -> Params:
        scheme = _scheme(action)
        if scheme == "fp8":
            bound = bind(action, ["scheme", "block", "scale", "into"], 1)
            return {"scheme": scheme, "block": _block(action, bound),
                    "scale": _word(action, bound, "scale", ("float32", "e8m0"), "float32"),
                    "into": capture_name(action, bound, "into")}
        bound = bind(action, ["scheme", "into"], 1)
        return {"scheme": scheme, "into": capture_name(action, bound, "into")}

    def count(self, p: Params) -> int:
        return 2

    def infer(self, p: Params, inputs: list[Typed], action: Action) -> tuple[list[Typed], Params]:
        (t,) = inputs
        if t.dtype not in WIDE:
            raise PlanError(f"quantize({p['scheme']}) takes {', '.join(WIDE)} tensors, got {t.dtype}", action.span)
        resolved = {k: v for k, v in p.items() if k != "into"}
        if p["scheme"] == "fp8":
            from .fp8 import grid

            if len(t.shape) < 2:
                raise PlanError(f"quantize(fp8): a tensor of shape {format_shape(t.shape)} has no blocks", action.span)
            scale = "float8_e8m0fnu" if p["scale"] == "e8m0" else "float32"
            return [Typed(tuple(t.shape), "float8_e4m3fn"), Typed(grid(tuple(t.shape), tuple(p["block"])), scale)], \
                {**resolved, "from": t.dtype}
        from .mxfp4 import BLOCK, quantized_shapes

        if len(t.shape) != 3 or t.shape[1] % BLOCK:
            raise PlanError(f"quantize(mxfp4) takes (E, K, N) experts with K a multiple of {BLOCK}, "
                            f"got shape {format_shape(t.shape)}", action.span)
        blocks, scales = quantized_shapes(tuple(t.shape))
        return [Typed(blocks, "uint8"), Typed(scales, "uint8")], {**resolved, "from": t.dtype}

    def rows(self, p: Params, inputs: list[Typed]) -> Rows | None:
        # One piece at a time (a plan step writes one): a 2-D FP8 tensor's bm rows give bm
        # rows of the weight or one row of scales; stacked experts go one expert at a time.
        piece = p.get("index")
        if piece is None:
            return None
        if p["scheme"] == "fp8" and len(inputs[0].shape) == 2:
            return Rows((p["block"][0],), p["block"][0] if piece == 0 else 1)
        return Rows((1,), 1)

    def run(self, p: Params, arrays: list) -> list:
        from . import fp8, mxfp4

        (x,) = arrays
        # A plan step writes one piece (`index`): the scales' step computes the scales alone.
        piece = p.get("index")
        if p["scheme"] == "fp8":
            q, s = fp8.quantize(x, tuple(p["block"]), p["scale"], dtype=p["from"], scales_only=piece == 1)
        else:
            q, s = mxfp4.quantize(x, p["from"], scales_only=piece == 1)
        return [q, s] if piece is None else [(q, s)[piece]]

    def loss(self, pa: PlannedAction) -> tuple[str, list[PlannedAction]] | None:
        p = pa.params
        back = {"scheme": p["scheme"], "dtype": p["from"], "over": None,
                **({"block": p["block"]} if p["scheme"] == "fp8" else {})}
        return _loss(pa, f"rounds {p['from']} values to {'float8' if p['scheme'] == 'fp8' else 'FP4'}; "
                         "dequantizing gives them back within that rounding",
                     [planned("dequantize", [back], [Typed(_full_shape(p["scheme"], tuple(pa.shapes[0])), p["from"])])])

    def config(self, p: Params) -> tuple[dict, frozenset] | None:
        if p["scheme"] != "fp8":
            return {QUANTIZATION_CONFIG: {"quant_method": "mxfp4"}}, frozenset()
        config = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                  "weight_block_size": list(p["block"])}
        if p["scale"] == "e8m0":
            config["scale_fmt"] = "ue8m0"
        return {QUANTIZATION_CONFIG: config}, frozenset()

    def written(self, pa: PlannedAction, axis: str | None, span=None) -> Action:
        p = pa.params
        if p["scheme"] == "fp8":
            return make("quantize", "fp8", block=tuple(p["block"]), scale=p["scale"], into=axis, span=span)
        return make("quantize", "mxfp4", into=axis, span=span)

    def display(self, pa: PlannedAction, index: bool = True) -> str:
        p = pa.params
        args = f", block={tuple(p['block'])}, scale={p['scale']}" if p["scheme"] == "fp8" else ""
        which = f"[{p['index']}]" if index and "index" in p else ""
        return f"quantize({p['scheme']}{args}){which}"


def _full_shape(scheme: str, quantized: tuple[int, ...]) -> tuple[int, ...]:
    """The full-precision shape a quantized weight (fp8) or its blocks (mxfp4) come from."""
    if scheme == "fp8":
        return quantized
    from .mxfp4 import dequantized_shape

    return dequantized_shape(quantized)
