"""Using a trained run: predictions from its checkpoint and exports to TorchScript and ONNX.

May import: ``platform``, ``spec``, ``data``, ``models``, ``runs``.
"""
