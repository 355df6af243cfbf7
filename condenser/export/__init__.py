"""Export a model's training as ONNX graphs that a device runs with onnxruntime alone."""

from condenser.export.bundle import ExportSettings, export_trainer, initial_model
from condenser.export.decompositions import decomposition_table
from condenser.export.errors import ExportError, UnsupportedOpError
from condenser.export.train_step import StepPlan, export_inference, export_train_step, plan_step
from runtime.bundle import AdamWConfig, LossConfig, SGDConfig

__all__ = ["AdamWConfig", "ExportError", "ExportSettings", "LossConfig", "SGDConfig", "StepPlan", "UnsupportedOpError",
           "decomposition_table", "export_inference", "export_train_step", "export_trainer", "initial_model",
           "plan_step"]
