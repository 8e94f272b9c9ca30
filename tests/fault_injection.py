"""`contrastive` with a SIGKILL at a chosen point, for tests/test_fault_injection.py.

    python tests/fault_injection.py POINT N -- pretrain ARGS...

POINT 'step': the process kills itself right after the N-th optimiser step of this process (its update made in
memory, its metrics record not yet written), as an OOM killer or a power cut would. 'save': inside the N-th
checkpoint write of this process, once half of the temp file is on disk and before it is renamed over the
checkpoint. 'signal-SIGINT' / 'signal-SIGTERM': that signal is sent after the N-th step (a clean stop, not a kill).
Under torchrun, POINT@R acts in the process of rank R only (the script is torchrun's entry point).
"""

import os
import signal
import sys

from contrastive_cli import checkpoint as ckpt
from contrastive_cli import train
from contrastive_cli.cli import app

point, n, args = sys.argv[1], int(sys.argv[2]), sys.argv[sys.argv.index("--") + 1:]
point, _, only_rank = point.partition("@")  # POINT@R: only the process of rank R (under torchrun) acts
acts = not only_rank or os.environ.get("RANK", "0") == only_rank
calls = 0


def counted() -> bool:
    global calls
    calls += 1
    return calls == n and acts


if point == "save":
    real_save_file = ckpt.save_file

    def save_file(tensors, path, metadata):
        real_save_file(tensors, path, metadata=metadata)
        if counted():
            os.truncate(path, os.path.getsize(path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    ckpt.save_file = save_file
else:
    real_step = train.optimisation_step
    sent = signal.SIGKILL if point == "step" else getattr(signal, point.removeprefix("signal-"))

    def optimisation_step(*a, **kw):
        out = real_step(*a, **kw)
        if counted():
            os.kill(os.getpid(), sent)
        return out

    train.optimisation_step = optimisation_step

app(args, prog_name="contrastive")
