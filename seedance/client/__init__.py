"""Python client SDK for Seedance's WebSocket protocol."""

from seedance.client.auth import ReauthError, TokenProvider
from seedance.client.breaker import BreakerState, CircuitBreaker, Transition
from seedance.client.connection import (
    ChunkOut,
    ConnectionLost,
    DoneOut,
    GenerationStream,
    SeedanceClient,
    SeedanceError,
)
from seedance.client.pool import NoHealthyEndpoint, SeedancePool
from seedance.client.sync import SyncSeedanceClient

__all__ = [
    "BreakerState",
    "ChunkOut",
    "CircuitBreaker",
    "ConnectionLost",
    "DoneOut",
    "GenerationStream",
    "NoHealthyEndpoint",
    "ReauthError",
    "SeedanceClient",
    "SeedanceError",
    "SeedancePool",
    "SyncSeedanceClient",
    "TokenProvider",
    "Transition",
]
