"""Model building blocks: the tiny generalist's encoder and batched decoding helpers."""
