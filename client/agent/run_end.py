"""The server's run-ended notice, as the agent reads it: checked, then one line to exit with.

The notice is the last message of a task stream (a ``Task`` whose ``run_ended``
is set), signed with the server's model-signing key over the node and the
session the stream was opened with, so only that server can end this agent's
run and an old notice cannot be replayed on a later session.

Examples:
    >>> from stamen.contract.edge import generate_key, public_bytes, run_ended_signing_bytes
    >>> key = generate_key()
    >>> task = edge_pb2.Task(run_id=1, run_ended=edge_pb2.RunEnded(
    ...     reason=edge_pb2.RUN_END_REASON_FINISHED, message="finished 5 rounds"))
    >>> task.run_ended.signature = key.sign(run_ended_signing_bytes(task, 7, "token"))
    >>> run_end_line(task, 7, "token", public_bytes(key.public_key()))
    'the run has ended on the server (finished): finished 5 rounds'
    >>> run_end_line(task, 7, "another session", public_bytes(key.public_key())) is None
    True
"""

from __future__ import annotations

from stamen.contract.edge import run_ended_signing_bytes, verify_signature
from stamen.protos.edge.v1 import edge_pb2

REASONS = {
    edge_pb2.RUN_END_REASON_FINISHED: "finished",
    edge_pb2.RUN_END_REASON_STOPPED: "stopped",
    edge_pb2.RUN_END_REASON_FAILED: "failed",
}


def is_run_end(task: edge_pb2.Task) -> bool:
    """Whether ``task`` is the run-ended notice rather than work."""
    return task.HasField("run_ended")


def run_end_line(
    task: edge_pb2.Task, node_id: int, session_token: str, model_key: bytes
) -> str | None:
    """The line the agent exits with, or ``None`` when the notice's signature does not verify."""
    notice = task.run_ended
    signed = run_ended_signing_bytes(task, node_id, session_token)
    if not verify_signature(model_key, bytes(notice.signature), signed):
        return None
    reason = REASONS.get(notice.reason, "ended")
    message = " ".join(notice.message.split())[:200]  # one line, whatever the server sent
    return f"the run has ended on the server ({reason}): {message or reason}"
