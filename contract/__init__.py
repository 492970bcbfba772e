"""The device–server contract: the task a device is given, the record keys it travels under.

Both sides of every grid read and write messages through these names: the
server builds a :class:`TrainTask` into each train message, the device parses
it back, and both find the model, update and metrics under the same keys.
Every grid counts a message's traffic the same way (:func:`message_nbytes`).
"""

from stamen.contract.task import (
    CONFIG_KEY,
    DENSE_KEY,
    LAST_MODEL_KEY,
    METRICS_KEY,
    MODEL_KEY,
    NUM_EXAMPLES,
    OUT_KEY,
    PAYLOAD,
    RESIDUAL_KEY,
    UPDATE_KEY,
    VELOCITY_KEY,
    TrainTask,
    payload_bytes,
    records_of,
)
from stamen.contract.traffic import array_nbytes, bytes_to_accuracy, message_nbytes

__all__ = [
    "CONFIG_KEY",
    "DENSE_KEY",
    "LAST_MODEL_KEY",
    "METRICS_KEY",
    "MODEL_KEY",
    "NUM_EXAMPLES",
    "OUT_KEY",
    "PAYLOAD",
    "RESIDUAL_KEY",
    "UPDATE_KEY",
    "VELOCITY_KEY",
    "TrainTask",
    "array_nbytes",
    "bytes_to_accuracy",
    "message_nbytes",
    "payload_bytes",
    "records_of",
]
