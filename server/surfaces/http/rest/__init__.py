"""The REST surface: every operation of the core under ``/api/v1``, with its OpenAPI."""
