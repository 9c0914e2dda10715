"""Python client SDK for Seedance's WebSocket protocol."""

from seedance.client.connection import (
    ChunkOut,
    ConnectionLost,
    DoneOut,
    GenerationStream,
    SeedanceClient,
    SeedanceError,
)
from seedance.client.sync import SyncSeedanceClient

__all__ = [
    "ChunkOut",
    "ConnectionLost",
    "DoneOut",
    "GenerationStream",
    "SeedanceClient",
    "SeedanceError",
    "SyncSeedanceClient",
]
