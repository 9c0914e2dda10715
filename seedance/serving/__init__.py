"""Above the engine, below the transports: one request's life (Generation), whatever carries it."""
