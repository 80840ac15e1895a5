"""Scripts' code that builds and converts the ONNX models; never imported by the orchestrator."""
