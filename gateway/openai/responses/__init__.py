"""``/v1/responses``: the Responses API, translated onto chat completions by ``serving.responses``."""
