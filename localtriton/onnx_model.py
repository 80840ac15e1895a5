"""Python-backend shim: serves this version directory's model.onnx with onnxruntime.

Runs inside Triton's Python-backend stub, in the Triton virtual environment (numpy < 2),
never in the orchestrator. Triton's dynamic batcher hands execute() several requests at
once; they are concatenated into one onnxruntime call so that batching is real here too.
"""

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        threads = os.environ.get("DH_LOCAL_TRITON_ORT_THREADS")
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        graph_inputs = {tensor.name for tensor in self.session.get_inputs()}
        missing = [name for name in self.input_names if name not in graph_inputs]
        if missing:
            raise pb_utils.TritonModelException(
                f"{path}: config inputs {missing} are not inputs of the ONNX graph "
                f"({sorted(graph_inputs)})"
            )

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            batches = {
                name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
                for name in self.input_names
            }
            sizes = [array.shape[0] for array in batches[self.input_names[0]]]
            feed = {name: np.concatenate(arrays) for name, arrays in batches.items()}
            results = self.session.run(self.output_names, feed)
        except Exception as exc:  # reported to every caller of this batch, with its message
            error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(result[start : start + size]))
                for name, result in zip(self.output_names, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
