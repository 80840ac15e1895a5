"""The lip-sync service: a thin asyncio orchestrator in front of NVIDIA Triton."""

import os

# Before numpy or scipy load OpenBLAS: the orchestrator runs its own pools of threads, and
# OpenBLAS's own threads on top of them (one set per calling thread, spinning while they
# wait) cost a live session's small matrix products more CPU than the products themselves:
# measured 0.70 against 0.42 cores for two sessions. A deployment may still set its own.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
