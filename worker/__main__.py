"""``python -m worker --bind ENDPOINT --model PATH [--device auto|cpu|cuda] [--backend torch|onnx] [--batch-size N]``."""
import sys

from .server import main

if __name__ == "__main__":
    sys.exit(main())
