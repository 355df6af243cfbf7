"""Error types of the trainer export."""

from condenser.errors import CondenserError


class ExportError(CondenserError):
    """The model cannot be exported as train-step/inference graphs (buffers, exporter failure, ...)."""


class UnsupportedOpError(ExportError):
    """The model uses an op variant that the train-step export cannot express in ONNX."""
