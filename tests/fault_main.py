"""`python -m tests.fault_main FLAGS`: main.py's CLI with the test-only fault models registered (for subprocess and torchrun tests)."""

import main
import tests.fault_models  # noqa: F401  (registers slow_tiny_cnn, inf_tiny_cnn, ...)

if __name__ == "__main__":
    main.program()
