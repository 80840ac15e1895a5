"""The lip-sync service: a thin asyncio orchestrator in front of NVIDIA Triton."""
