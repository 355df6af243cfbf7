"""The condenser's settings: one nested, frozen, typed tree (docs/config.md).

condenser.config.tree defines the tree (`Config`: teacher, condense with its multisize subsection, method,
relabel, pack, evaluate, quick and the bench overlay); condenser.profiles names its instances (smoke, cpu,
paper) and resolves a command's tree: profile, then `--config FILE`, then `--set section.field=value`.
This package's own modules, the type-checked updates (schema) and the file and `--set` readers (sources),
import nothing else of the condenser, so any settings class may use them.
"""

from condenser.config.schema import ConfigError, as_dict, differences, job_fields, updated
from condenser.config.sources import items_mapping, load_file, parse_item

__all__ = ["ConfigError", "as_dict", "differences", "items_mapping", "job_fields", "load_file", "parse_item",
           "updated"]
