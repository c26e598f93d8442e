"""Serving: the predictor (bytes -> features -> model -> JSON), the TorchServe handler and archive, the KServe predictor server, the local TorchServe."""
