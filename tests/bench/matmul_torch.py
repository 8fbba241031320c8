#!/usr/bin/env python3
"""PyTorch reference for tests/bench/gpu-matmul.c: torch.matmul on the GPU,
bf16 N1^3 and f32 N2^3 (TF32 off, as moelab's default), timed with CUDA
events (mean of 20 after 3 warm-up calls, as the C benchmark).

Prints "torch_tflops bf16 X" and "torch_tflops f32 Y" for the benchmark to read.
Usage: matmul_torch.py [N_BF16 [N_F32]]"""
import sys

import torch

WARMUP, REPS = 3, 20


def tflops(n, dtype):
    gen = torch.Generator(device="cuda").manual_seed(7)
    a = torch.rand((n, n), device="cuda", dtype=torch.float32, generator=gen).to(dtype)
    b = torch.rand((n, n), device="cuda", dtype=torch.float32, generator=gen).to(dtype)
    for _ in range(WARMUP):
        torch.matmul(a, b)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(REPS):
        torch.matmul(a, b)
    end.record()
    end.synchronize()
    ms = start.elapsed_time(end)
    return 2.0 * n ** 3 * REPS / (ms * 1e-3) / 1e12


def main():
    n16 = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
    n32 = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        print(f"torch_tflops bf16 {tflops(n16, torch.bfloat16):.2f}")
        print(f"torch_tflops f32 {tflops(n32, torch.float32):.2f}")


if __name__ == "__main__":
    main()
