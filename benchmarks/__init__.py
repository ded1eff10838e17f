"""scoredyn benchmarks: sampler overhead, compile time and memory, PF-ODE solvers, sample quality
per network evaluation, and a PyTorch/diffusers peer comparison.

Run with ``make bench`` or ``python -m benchmarks.run [--quick] [--sections 1,2,...]``.
Results go to ``benchmarks/results/<date>-<machine>.md`` with a plot next to it.
"""
