"""Base condensation methods behind one interface (base.BaseMethod) and one registry (METHODS).

Every method registers itself beside its class (`@METHODS.register("gm")`); `METHODS` imports the modules
that define methods on its first lookup, so `METHODS.names()` is complete whatever was imported first.
"""

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

__all__ = ["METHODS", "BaseMethod", "DMSettings", "DistributionMatching", "GMSettings", "GradientMatching",
           "MaskedSGD", "MethodConfigError", "StepContext", "SyntheticSet", "build_method", "init_synthetic"]
