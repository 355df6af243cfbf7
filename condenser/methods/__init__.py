"""Base condensation methods behind one interface (base.BaseMethod) and one registry (METHODS)."""

from condenser.methods.base import (
    METHODS,
    BaseMethod,
    MethodConfigError,
    StepContext,
    build_method,
)
from condenser.methods.dm import DistributionMatching, DMSettings
from condenser.methods.gm import GMSettings, GradientMatching
from condenser.methods.synthetic import MaskedSGD, SyntheticSet, init_synthetic

METHODS.add("gm", GradientMatching)
METHODS.add("dm", DistributionMatching)


def method_names() -> list[str]:
    return METHODS.names()


__all__ = ["METHODS", "BaseMethod", "DMSettings", "DistributionMatching", "GMSettings", "GradientMatching",
           "MaskedSGD", "MethodConfigError", "StepContext", "SyntheticSet", "build_method", "init_synthetic",
           "method_names"]
