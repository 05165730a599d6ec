"""GDAL raster input and output, polygons and statistics (no torch): runs inside QGIS and in the worker."""
