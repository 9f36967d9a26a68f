"""Rate limits of /v1 (``limiter``) over counters in the process or in Redis (``counters``)."""
