"""The transports over one engine API: WebSocket, OpenAI SSE / JSON, polling."""
