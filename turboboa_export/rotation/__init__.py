"""Rotations for W4A4 (QuaRot recipe, algorithm.md section 6): Hadamard matrices, their fusion into the weights,
online transforms and activation fake-quantization."""
