"""The REST service: FastAPI routes over the job store and the scheduler."""
