"""Export a model's training as ONNX graphs that a device runs with onnxruntime alone."""

from condenser.export.bundle import ExportSettings, export_trainer, initial_model
from condenser.export.decompositions import decomposition_table
from condenser.export.errors import ExportError, UnsupportedOpError
from condenser.export.train_step import (
    export_inference,
    export_train_step,
    graph_names,
)

__all__ = ["ExportError", "ExportSettings", "UnsupportedOpError", "decomposition_table", "export_inference",
           "export_train_step", "export_trainer", "graph_names", "initial_model"]
