"""The FactSeg worker (ZeroMQ inference service) and its client.

``worker.client`` (protocol, client, keys) is light (numpy + pyzmq) and runs inside QGIS; ``worker.server`` loads
the model through ``factseg_core`` and runs in its own process (``python -m worker``). This package's
``__init__`` imports nothing heavy so the plugin can import the client without torch.
"""
