"""fedveil's Flower ClientApp: train with DP-SGD and reply with the sealed update and DP facts.

Thin by design: each handler hands the request to ``client.training_round`` and wraps the reply.
The run configuration arrives with every request (the server owns it), so the same app runs
unchanged under ``fedveil simulate``, ``flwr run`` and a real SuperNode. ``app`` has no mods and
no path that misbehaves on request; a simulation may build its own ``ClientApp`` around the
handlers ``train`` and ``query``.

``app``'s lifespan (``cap_kernel_cache``) sets ``ONEDNN_PRIMITIVE_CACHE_CAPACITY=0`` unless the
node's owner set it: DP-SGD's Poisson batches change size every step and oneDNN (PyTorch's CPU
convolutions) keeps a compiled kernel per shape, so a node's fresh ClientApp process saves that
memory at no cost in time. A simulation's long-lived actors reuse those kernels round after
round, so its ClientApp (built around ``train`` and ``query``) leaves the cache alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.training_round import answer_plan_query, run_training_round

app = ClientApp()


@app.lifespan()
def cap_kernel_cache(context: Context) -> Iterator[None]:
    """Cap oneDNN's kernel cache at 0 for this process, unless the node's owner chose a size."""
    # oneDNN reads this when it builds its first kernel (not at import): set before any training.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")
    yield


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train on the node's own data or partition; reply with the sealed update and DP facts."""
    return Message(content=run_training_round(msg, context), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Answer the server's planning query: this client's sampling rate and steps per round."""
    return Message(content=answer_plan_query(msg, context), reply_to=msg)
