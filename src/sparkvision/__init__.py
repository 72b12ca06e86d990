"""sparkvision: transfer-learning image classification on Spark (load -> featurize -> train -> evaluate ->
predict). The package's layout by role is in docs/design.md."""

import importlib
import importlib.abc
import importlib.util
import sys

#: Modules whose classes a saved model names, by their name before the packages by role (issue 25): a Spark
#: ML pipeline saved then holds ``sparkvision.featurizer.DeepImageFeaturizer`` in its stages' metadata.
MOVED = {"sparkvision.featurizer": "sparkvision.ml.featurizer", "sparkvision.logistic": "sparkvision.ml.logistic"}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name in :data:`MOVED` as the module it became (the same module object), so
    models saved by earlier versions load; consulted only after the normal finders found nothing."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
