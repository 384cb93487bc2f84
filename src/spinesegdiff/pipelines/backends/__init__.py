"""Runtimes for the denoiser: OpenVINO and ONNX Runtime behind the interface the sampler calls."""
