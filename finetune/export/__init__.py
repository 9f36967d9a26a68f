"""Edge export: merged weights, GGUF (llama.cpp's own converters and quantizer)."""
