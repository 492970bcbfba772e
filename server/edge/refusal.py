"""How the asynchronous edge servicer refuses a call: raise :class:`Refusal`, anywhere.

A handler (or any helper it calls) raises ``Refusal(status, code, message)``;
the :func:`refusing` decorator ends the call with that gRPC status and a typed
``EdgeError`` in the trailers (``stamen-edge-error-bin``), which the agent
reads back with :func:`stamen.contract.edge.edge_error_of`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from stamen.contract.edge import error_trailers
from stamen.protos.edge.v1 import edge_pb2
from stamen.server.edge.registry import DeviceStatus

F = TypeVar("F", bound=Callable[..., Any])


class Refusal(Exception):
    """A refused call: the gRPC status, the edge error code and why."""

    def __init__(
        self, status: grpc.StatusCode, code: int, message: str, *, retry_after: float = 0.0
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after

    async def abort(self, context: aio.ServicerContext[Any, Any]) -> None:
        """End the call with this refusal (raises grpc's abort exception)."""
        await context.abort(
            self.status,
            str(self),
            trailing_metadata=error_trailers(self.code, str(self), self.retry_after),
        )


def refusing(handler: F) -> F:
    """Turn a :class:`Refusal` raised by an RPC handler (unary or streaming) into its status."""
    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for item in handler(self, request, context):
                    yield item
            except Refusal as refusal:
                await refusal.abort(context)

        return stream  # type: ignore[return-value]

    @functools.wraps(handler)
    async def unary(self: Any, request: Any, context: Any) -> Any:
        try:
            return await handler(self, request, context)
        except Refusal as refusal:
            await refusal.abort(context)

    return unary  # type: ignore[return-value]


def refused_device(ident: str, status: DeviceStatus) -> Refusal:
    """The refusal of a device the registry does not admit (revoked, or never registered)."""
    if status is DeviceStatus.REVOKED:
        return Refusal(
            grpc.StatusCode.PERMISSION_DENIED,
            edge_pb2.ERROR_CODE_REVOKED_DEVICE,
            f"device {ident[:12]} was revoked on this server",
        )
    return Refusal(
        grpc.StatusCode.PERMISSION_DENIED,
        edge_pb2.ERROR_CODE_UNKNOWN_DEVICE,
        f"device {ident[:12]} is not registered on this server; "
        f"run: stamen devices register <its public key>",
    )
