"""Read and write every attention head through one registered attention function.

>>> import headatlas, torch
>>> from headatlas.instrument import instrumented, Taps, zero
>>> m = headatlas.load("smollm2-135m")                                  # doctest: +SKIP
>>> ids = m.tokenizer("The capital of France is", return_tensors="pt").input_ids
>>> with torch.no_grad(), instrumented(m, edits=[zero(5, 2)], taps=Taps(z=True)) as rec:  # doctest: +SKIP
...     logits = m.model(ids).logits
"""

from .edits import Edit, HeadEdit, RowHeadPatch, add, patch, scale, set_value, zero
from .registry import install
from .session import LayerCall, Recording, Taps, instrumented, stack_layers

__all__ = ["Edit", "HeadEdit", "LayerCall", "Recording", "RowHeadPatch", "Taps", "add", "install",
           "instrumented", "patch", "scale", "set_value", "stack_layers", "zero"]
