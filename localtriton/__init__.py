"""The real Triton server on a machine with no Docker and no GPU (see docs/usage.md).

Production runs Triton's NGC image with the ONNX Runtime backend on GPUs. Here the
`tritonserver` binary from the nvidia-pytriton wheel serves a CPU copy of the same model
repository: same configs and batching, with a Python-backend shim that runs the same
model.onnx with onnxruntime.
"""
