"""Flower apps that cost nothing: a ClientApp that answers at once, a ServerApp that times rounds.

Each round sends one ``train`` message to every SuperNode and waits for all the
replies; the ServerApp writes each round's wall time to ``out`` as JSON. The
ClientApp imports only flwr, so a round on Flower's runtime is its polling and
its process per message, with no PyTorch import and no training.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client = ClientApp()
server = ServerApp()


@client.train()
def train(message: Message, context: Context) -> Message:
    """Answer at once."""
    return Message(RecordDict({"metrics": MetricRecord({"ok": 1})}), reply_to=message)


@server.main()
def main(grid: Grid, context: Context) -> None:
    """Time ``rounds`` rounds of one message to each of ``num-devices`` SuperNodes."""
    wanted = int(context.run_config["num-devices"])
    rounds = int(context.run_config["rounds"])
    out = Path(str(context.run_config["out"]))
    while len(nodes := list(grid.get_node_ids())) < wanted:
        time.sleep(0.5)
    seconds: list[float] = []
    for round_ in range(1, rounds + 1):
        started = time.perf_counter()
        messages = [
            Message(
                RecordDict({"config": ConfigRecord({"round": round_})}),
                dst_node_id=node,
                message_type="train",
                group_id=str(round_),
            )
            for node in nodes
        ]
        replies = list(grid.send_and_receive(messages))
        seconds.append(time.perf_counter() - started)
        out.write_text(json.dumps({"round_seconds": seconds, "replies": len(replies)}) + "\n")
