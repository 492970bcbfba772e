"""A custom Flower federation built from Stamen's parts (the README's library example)."""

from flwr.app import Context, RecordDict
from flwr.serverapp import Grid, ServerApp

from stamen.client import FleetData, client_app
from stamen.compression import (
    DownlinkCodecConfig,
    PruningConfig,
    QATConfig,
    UplinkCodecConfig,
    ValueFormat,
)
from stamen.config import DataSettings
from stamen.contract import TrainTask
from stamen.data import PartitionScheme
from stamen.models import ModelName, ModelSpec, build_model, exchanged_state
from stamen.simulations import LocalGrid
from stamen.strategies import CompressedFedAvg
from stamen.transport import to_array_record

spec = ModelSpec(name=ModelName.MLP, input_shape=(1, 8, 8), num_classes=10)  # sklearn digits
strategy = CompressedFedAvg(
    model_factory=lambda: build_model(spec),
    task=TrainTask(
        model=spec.name,
        local_epochs=2,
        lr=0.1,
        qat=QATConfig(weight_bits=4),
        uplink=UplinkCodecConfig(topk_ratio=0.05, values=ValueFormat.Q4, error_feedback=True),
    ),
    downlink=DownlinkCodecConfig(values=ValueFormat.Q8),
    pruning=PruningConfig(target_sparsity=0.5, ramp_rounds=3),
    devices_per_round=5,
)
server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    initial = to_array_record(exchanged_state(build_model(spec, seed=0)))
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=5)
    context.state["final"] = result.arrays


fleet = FleetData(
    DataSettings(dataset="digits", partition=PartitionScheme.IID), num_devices=10, seed=0
)
if __name__ == "__main__":
    server(LocalGrid(client_app(fleet), num_nodes=10), Context(0, 0, {}, RecordDict(), {}))
    print({r: s.accepted for r, s in strategy.stats.items()})
