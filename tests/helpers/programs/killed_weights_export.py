"""Export weights once, then get SIGKILLed inside the second export's save_weights (after a
truncated write); run by tests/runtime/test_checkpoint.py, which loads the file afterwards.

    python -m tests.helpers.programs.killed_weights_export PATH
"""

from __future__ import annotations

import os
import signal
import sys

import keras

from runtime.checkpoint import save_weights_atomically


def main(path: str) -> None:
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    save_weights_atomically(model, path)
    real = model.save_weights

    def killed(target):
        real(target)
        os.truncate(target, 100)
        os.kill(os.getpid(), signal.SIGKILL)

    model.save_weights = killed
    save_weights_atomically(model, path)


if __name__ == "__main__":
    main(sys.argv[1])
