"""`python -m runtime train FILE --budget 3 --backend onnx --test-data fashion-mnist`."""

import sys

from runtime.cli import main

sys.exit(main())
