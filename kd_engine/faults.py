"""Named crash points for the fault-injection tests (tests/test_faults.py).

``KDW_FAULT=<point>[:<n>]`` in a trainer's environment makes it SIGKILL itself the n-th time
(default: the first) it passes `fault_point(<point>)`, exactly as a power cut, an OOM kill or
`kill -9` would stop it there. Without the variable a point costs one comparison. The points:

- ``instances_txn``: inside a per-instance INSERT transaction, before its COMMIT;
- ``instances_commit``: right after that COMMIT;
- ``state_written``: the training state's temporary file is written, not yet renamed;
- ``checkpointed``: the epoch's checkpoint is renamed into place (the epoch is done);
- ``final_eval``: inside the final evaluation, its test rows written, its metrics not yet;
- ``train_batch``: a classification run about to hand the trainer its next training batch
  (counted over all epochs: mid-epoch, with any streaming workers running).
"""
from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("KDW_FAULT", "")
_POINT, _, _COUNT = _SPEC.partition(":")
_WANTED = int(_COUNT) if _COUNT.isdigit() else 1
_hits = 0


def fault_point(name: str) -> None:
    """Die here (SIGKILL, no clean-up of any kind) if KDW_FAULT names this point and hit."""
    global _hits
    if not _POINT or name != _POINT:
        return
    _hits += 1
    if _hits == _WANTED:
        os.kill(os.getpid(), signal.SIGKILL)
