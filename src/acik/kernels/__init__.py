"""acik's C kernels for x86-64 CPUs, built on first use (build.py): quantized matmuls (cpu_matmul) and causal
attention for training (cpu_attention)."""
