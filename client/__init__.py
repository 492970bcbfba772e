"""The device side: the Stamen ClientApp, local data and the local trainer."""

from stamen.client.app import client_app
from stamen.client.local_data import FleetData, LocalData, device_data
from stamen.client.trainer import EvalResult, TrainResult, evaluate, train_epochs

__all__ = [
    "EvalResult",
    "FleetData",
    "LocalData",
    "TrainResult",
    "client_app",
    "device_data",
    "evaluate",
    "train_epochs",
]
