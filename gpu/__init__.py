"""GPU decoding (CuPy raw kernels) and the CPU runtime that executes the same kernels in tests."""
