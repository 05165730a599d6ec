"""What every FactSeg Processing algorithm shares: its id, title, tags and icon, advanced parameters, and the
worker parameters (an endpoint with its CURVE keys, or a local worker) with the one way they are resolved."""
from __future__ import annotations

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingParameterAuthConfig,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterString,
)
from qgis.PyQt.QtGui import QIcon

from ..curve import resolve_keys
from ..errors import FactSegError
from ..job import WorkerTarget
from ..local_workers import LocalWorkerSpec
from ..mistakes import endpoint_problem, model_path_problem
from ..plugin_info import ICON_PATH
from ..settings import DEVICES, PluginSettings
from ..worker_import import contract


class FactSegAlgorithm(QgsProcessingAlgorithm):
    """A Processing algorithm of the ``factseg`` provider: subclasses set NAME, TITLE and TAGS."""

    NAME = ""
    TITLE = ""
    TAGS: tuple[str, ...] = ()
    WORKER = "WORKER"
    MODEL = "MODEL"
    WORKER_PYTHON = "WORKER_PYTHON"
    DEVICE = "DEVICE"
    SERVER_KEY = "SERVER_KEY"
    CLIENT_KEY = "CLIENT_KEY"
    AUTHCFG = "AUTHCFG"

    def name(self) -> str:
        return self.NAME

    def displayName(self) -> str:  # noqa: N802
        return self.TITLE

    def group(self) -> str:
        return ""

    def groupId(self) -> str:  # noqa: N802
        return ""

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def tags(self) -> list[str]:
        return [*self.TAGS, "factseg"]

    def createInstance(self) -> FactSegAlgorithm:  # noqa: N802
        return type(self)()

    def add_advanced(self, *params: QgsProcessingParameterDefinition) -> None:
        """Add parameters under the dialog's *Advanced* fold."""
        for param in params:
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
            self.addParameter(param)

    def local_worker_parameters(self) -> tuple[QgsProcessingParameterDefinition, ...]:
        """WORKER_PYTHON and DEVICE of a local worker (advanced: the defaults suit most users)."""
        return (
            QgsProcessingParameterString(self.WORKER_PYTHON, "Python for a local worker (needs torch)", "",
                                         optional=True),
            QgsProcessingParameterEnum(self.DEVICE, "Device for a local worker", list(DEVICES), defaultValue=0),
        )

    def key_parameters(self) -> tuple[QgsProcessingParameterDefinition, ...]:
        """SERVER_KEY and CLIENT_KEY files, or AUTHCFG, for a remote (CURVE) worker."""
        return (
            QgsProcessingParameterString(self.SERVER_KEY, "Remote worker's public key (server.key file or z85)",
                                         "", optional=True),
            QgsProcessingParameterFile(self.CLIENT_KEY, "This client's secret key file (.key_secret)",
                                       optional=True),
            QgsProcessingParameterAuthConfig(self.AUTHCFG, "Authentication configuration with the CURVE keys",
                                             "", optional=True),
        )

    def worker_target(self, parameters, context: QgsProcessingContext, batch_size: int = 0) -> WorkerTarget:
        """Where to run: the endpoint (with its CURVE keys, if any), else a local worker for MODEL."""
        text = lambda key: (self.parameterAsString(parameters, key, context) or "").strip()  # noqa: E731
        endpoint = text(self.WORKER)
        if endpoint:
            if endpoint_problem(endpoint):
                raise QgsProcessingException(endpoint_problem(endpoint))
            try:
                keys = resolve_keys(text(self.SERVER_KEY), self.parameterAsFile(parameters, self.CLIENT_KEY, context),
                                    text(self.AUTHCFG))
            except FactSegError as exc:
                raise QgsProcessingException(str(exc)) from exc
            if keys is None:
                return WorkerTarget(endpoint)
            return WorkerTarget(endpoint, server_key=keys.server_public, client_keys=keys.client_keys)
        model = self.parameterAsFile(parameters, self.MODEL, context)
        if not model:
            raise QgsProcessingException(
                f"Give a WORKER endpoint (e.g. {contract.DEFAULT_ENDPOINT}), or a MODEL to start a local worker.")
        if model_path_problem(model):
            raise QgsProcessingException(model_path_problem(model))
        device = DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)]
        python = text(self.WORKER_PYTHON) or PluginSettings.load().worker_python
        return WorkerTarget(local=LocalWorkerSpec(python, model, device, batch_size))
