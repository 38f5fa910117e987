"""Readers of pre-quantized checkpoints (AutoGPTQ, AutoAWQ, GGUF) into the canonical formats."""
