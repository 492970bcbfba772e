"""Stamen subpackage."""

import os

# gRPC's C core logs TLS handshake failures and other connection noise to stderr in its
# own format; the agent and the server say what went wrong in one line instead. Set
# before any stamen.cli module imports grpc, as Flower does (flwr.supercore.grpc).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
