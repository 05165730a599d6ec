"""The FactSeg Processing provider (id ``factseg``) and its algorithm ``factseg:segment``.

Named ``processing_provider`` rather than ``processing`` so that it can never shadow QGIS's own ``processing``
package, whatever the order of ``sys.path``.
"""
from .provider import FactSegProvider

__all__ = ["FactSegProvider"]
