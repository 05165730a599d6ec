"""Batch segmentation of many rasters on a Dask distributed cluster (``python -m worker.batch``).

Worker-side only: nothing here is imported by QGIS-side code (qgis_plugin, worker.client, worker.io), so QGIS
never needs dask. See the README section "Many scenes, many GPUs".
"""
