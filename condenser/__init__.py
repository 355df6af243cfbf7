"""Server side of multisize: datasets, models, teachers, condensation, relabelling, packing.

Imports point one way: condenser -> runtime -> formats.
"""

__version__ = "0.1.0"
