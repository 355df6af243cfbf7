"""`python -m runtime train FILE --budget 3 --backend onnx --test-data fashion-mnist`."""

import sys

from formats._alloc import configure_allocator
from runtime.cli import main

configure_allocator()  # see formats/_alloc.py
sys.exit(main())
