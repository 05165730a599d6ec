"""Fixtures the plugin's tests share: one real worker per module, the plugin as QGIS loads it, and the Processing
provider registered as the plugin registers it."""
from __future__ import annotations

import pytest
from plugin_support import registered_provider, start_worker
from qgis.core import QgsProject


@pytest.fixture(scope="module")
def worker(tiny_checkpoint):
    """A real worker process on loopback serving the tiny model."""
    running = start_worker(tiny_checkpoint)
    yield running
    running.stop()


@pytest.fixture()
def plugin(qgis_iface, qgis_processing):
    """The plugin with its menu and toolbar, unloaded afterwards with every layer it added."""
    from qgis_plugin.plugin import FactSegPlugin

    qgis_iface.messageBar().clear_messages()
    instance = FactSegPlugin(qgis_iface)
    instance.initGui()
    yield instance
    instance.unload()
    QgsProject.instance().removeAllMapLayers()


@pytest.fixture(scope="module")
def provider(qgis_processing):
    """factseg's Processing algorithms registered, as the plugin does."""
    yield from registered_provider()
