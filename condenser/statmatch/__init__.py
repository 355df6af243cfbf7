"""One statistics-matching engine for the decoupled methods (SRe2L, G-VBSM, Teddy).

hooks/stats: batch statistics of matched layers; cache: real-data conv statistics on disk; objective:
CE + BN/conv distances over a teacher pool; augment: multi-crop views; dd: data densification; recover:
the per-IPC Adam loop; order: herding; teachers/pool: who is matched; settings: the three presets;
joint: the loss as a condense-loop base method (multisize subset loss); stage: the build stage.
"""

from condenser.statmatch.augment import RecoverAugConfig, recover_augment
from condenser.statmatch.cache import cached_conv_stats, compute_conv_stats, load_conv_stats, model_hash
from condenser.statmatch.objective import MatchConfig, NoStatisticsError, StatMatchObjective
from condenser.statmatch.order import herd, herding_order
from condenser.statmatch.pool import SAMPLERS, PoolMember, TeacherPool
from condenser.statmatch.recover import RecoverConfig, RecoverResult, recover
from condenser.statmatch.settings import PRESETS, DecoupledSettings, settings_for

__all__ = ["PRESETS", "SAMPLERS", "DecoupledSettings", "MatchConfig", "NoStatisticsError", "PoolMember",
           "RecoverAugConfig", "RecoverConfig", "RecoverResult", "StatMatchObjective",
           "TeacherPool", "cached_conv_stats", "compute_conv_stats", "herd", "herding_order", "load_conv_stats",
           "model_hash", "recover", "recover_augment", "settings_for"]
