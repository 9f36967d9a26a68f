"""The ``/v1`` OpenAI-compatible API, one sub-package per area (protocol / serving / api_router)."""
