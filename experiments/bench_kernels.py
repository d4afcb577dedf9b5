"""Node-kernel benchmark (parconv.bench): CPU kernel vs torch and SGEMM, int8 path, Gemmini node.

Run:  python experiments/bench_kernels.py            (writes experiments/results/kernels/bench.json)
      python experiments/bench_kernels.py --threads 1 --rounds 3 --layers resnet50.layer4.1.conv2
Same options as ``python -m parconv.bench --help``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parconv.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
