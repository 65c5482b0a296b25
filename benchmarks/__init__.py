"""Side-by-side benchmarks: `make bench` (CPU) and `benchmarks/gpu_bench.py` (one NVIDIA GPU)."""
