"""fedveil's Flower ClientApp: train with DP-SGD and reply with the update and its DP facts.

Thin by design: it reads the request, hands the work to ``client.training_round`` and builds the
reply. The run configuration arrives with every request (the server owns it), so the same app
runs unchanged under ``fedveil simulate``, ``flwr run`` and a real SuperNode.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.training_round import answer_plan_query, run_training_round

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train on the local partition and reply with the new weights and DP facts."""
    return Message(content=run_training_round(msg, context), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Answer the server's planning query: this client's sampling rate and steps per round."""
    return Message(content=answer_plan_query(msg, context), reply_to=msg)
