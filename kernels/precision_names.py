"""The precision names, importable without torch (the spec and ``bakeoff list`` need them, not torch)."""

PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed")
