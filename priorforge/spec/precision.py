"""The names of the numeric precisions (:mod:`generation.precision` applies them)."""

PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # inference: ``priorforge sample --precision``, INFERENCE_PRECISION
AMP_MODES = ("off", "bf16", "fp16")  # training: ``TrainConfig.amp`` / ``priorforge train --amp``
