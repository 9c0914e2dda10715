"""The HTTP side of the server: app, config, auth and policy, limits, TLS, CORS, observability."""
