"""Save training checkpoints in a loop until killed; tests/runtime/test_checkpoint.py SIGKILLs it.

    python -m tests.helpers.programs.checkpoint_writer MODEL_DIR

Resumes from MODEL_DIR's latest checkpoint, then trains one step and saves the next epoch's
checkpoint (at most two kept), printing the epoch number after each save.
"""

from __future__ import annotations

import sys

from runtime.checkpoint import TrainingCheckpoint
from tests.helpers.checkpoint_state import one_step, training_state


def main(model_dir: str) -> None:
    model, opt, ema = training_state()
    ckpt = TrainingCheckpoint(model_dir, model, opt, ema, max_to_keep=2)
    epoch = ckpt.restore_latest() or 0
    while True:
        one_step(model, opt, ema)
        epoch += 1
        ckpt.save(epoch)
        print(epoch, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
