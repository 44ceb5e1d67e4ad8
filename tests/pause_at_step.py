"""Run mathpe's command line, but stop at a known training step so a test can kill the run there.

Usage: ``python tests/pause_at_step.py STEP mathpe-arguments...``. At the end of training step STEP the
process prints ``PAUSED_LINE`` on stdout and waits for a signal, so the test signals it at that step on any
machine, however slow, instead of racing a sleep against the training loop.
"""

from __future__ import annotations

import signal
import sys

from transformers.trainer_callback import CallbackHandler

from mathpe.cli.main import main

PAUSED_LINE = "paused at step"


def pause_at(step: int) -> None:
    """After every callback has seen the end of ``step``, announce it and wait for a signal."""
    on_step_end = CallbackHandler.on_step_end

    def on_step_end_then_pause(self, args, state, control, **kwargs):
        control = on_step_end(self, args, state, control, **kwargs)
        if state.global_step == step:
            print(f"{PAUSED_LINE} {step}", flush=True)
            signal.pause()  # SIGKILL ends the process here; SIGTERM's handler raises out of it
        return control

    CallbackHandler.on_step_end = on_step_end_then_pause


if __name__ == "__main__":
    pause_at(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
