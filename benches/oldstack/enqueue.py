"""Enqueues a broadcast as the old api did: one task per device, or one per BATCH devices.

argv: devices, batch size (1 = a `push` task per device), task name for batches
(push_batch or push_batch_async), queue, title. Tokens are fcm-token-<i> and 140 x, as the benchmark's
registry has them. Prints the seconds it took.
"""

import sys
import time

from app import app

devices, batch, task, queue, title = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:6]
body = "Your November bill of 12,500 XOF is due on 5 December."
data = {"kind": "bill"}
PAD = "x" * 140
started = time.monotonic()
with app.producer_or_acquire() as producer:
    for first in range(0, devices, batch):
        tokens = [f"fcm-token-{i:07}{PAD}" for i in range(first, min(first + batch, devices))]
        if batch == 1:
            app.send_task("push", args=(tokens[0], title, body, data), queue=queue, producer=producer)
        else:
            app.send_task(task, args=(tokens, title, body, data), queue=queue, producer=producer)
print(f"{time.monotonic() - started:.3f}")
