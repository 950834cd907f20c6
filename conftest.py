"""Test-session set-up shared by the unit tests and the notebooks run by nbval.

Under pytest-xdist each worker already keeps one core busy. If every worker (and every notebook kernel it starts)
also let PyTorch spread over all cores, the threads would fight over them: on a 2-core machine that made some
notebooks 10-50x slower. So each worker, and the kernels it starts (they inherit the environment), use one thread.
"""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
