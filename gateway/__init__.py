"""HTTP edge: wire schemas per API area, thin controllers, auth, errors → OpenAI envelope, SSE, CLI.

Nothing imports ``gateway``.
"""
