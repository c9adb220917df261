"""The names of the numeric precisions (:mod:`generation.precision` applies them)."""

PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # inference: ``priorforge sample --precision``, INFERENCE_PRECISION
AMP_MODES = ("off", "bf16", "fp16")  # training: ``TrainConfig.amp`` / ``priorforge train --amp``

# rows per decode pass: the service's GENERATE_CHUNK default and ``priorforge sample --pass-size``. Every pass has
# exactly this many rows (padded), so a code decodes to the same pixels in the service and on the command line
DECODE_PASS_ROWS = 8
