"""``/v1/uploads``: a large file sent in parts, assembled and checked like any upload."""
