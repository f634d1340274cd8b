#!/usr/bin/env python3
"""The GPU check in one command: ``python3 benchmarks/gpu_check.py`` on the GPU machine (harness/gpucheck.py).

``--device cpu`` is the dry run CI runs; ``publish DIR`` turns the returned files into a report here;
``fetch-wheels`` downloads the wheels the GPU image lacks into ``.whl/``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.gpucheck import main

if __name__ == "__main__":
    sys.exit(main())
