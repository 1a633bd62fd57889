"""The values an ONNX Runtime setting may take, shared by the scorer and config.pbtxt.

Contract: `SPIN_MODES` lists when ONNX Runtime's intra-op threads may busy-wait for
work instead of sleeping; `is_count(value)` says whether a value may be a thread
count. serving/scorer.py checks its `RuntimeSettings` against them and
serving/pbtxt.py checks the config it renders and reads back, so both accept the same
values. Only the standard library is imported: rendering a config does not load ONNX
Runtime.
"""

from __future__ import annotations

# when ONNX Runtime's intra-op threads busy-wait for work instead of sleeping
SPIN_NEVER, SPIN_WITHIN_CALLS, SPIN_ALWAYS = "never", "within-calls", "always"
SPIN_MODES = (SPIN_NEVER, SPIN_WITHIN_CALLS, SPIN_ALWAYS)


def is_count(value: object) -> bool:
    """Whether `value` is an int and not a bool: what a thread count may be."""
    return isinstance(value, int) and not isinstance(value, bool)
