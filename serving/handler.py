"""TorchServe handler for ser models: the file to name in `--handler` or a .mar.

The code lives in :mod:`ser.serve.ts_handler`, inside the installed package, so that
images without a source checkout (the pipelines' publish step, the serving image)
build the same archive. TorchServe takes the handler class defined in this module.
"""

from ser.serve.ts_handler import SerHandler as _SerHandler


class SerHandler(_SerHandler):
    """bytes -> decode -> ser.data.features.extract (as in training) -> model -> JSON."""
