"""The run-time stack a job needs, checked when it starts: a task that finds incompatible versions fails
at once with a message naming them, instead of deep inside a Spark job.

The ranges are the wheel's own ``stack`` extra (``pyproject.toml``), read from the installed package's
metadata, so there is one place for them. Versions are read from the modules themselves: Databricks
runtimes ship PySpark without pip metadata, and TensorFlow is ``tensorflow`` or ``tensorflow-cpu``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, requires, version

from sparkvision.errors import StackError

EXTRA = "stack"


def requirements(dist: str = "sparkvision") -> list:
    """The ``stack`` extra's requirements (``packaging`` Requirement objects); none if not installed as a package."""
    from packaging.requirements import Requirement  # optional

    try:
        declared = requires(dist) or []
    except PackageNotFoundError:
        return []
    out = []
    for text in declared:
        req = Requirement(text)
        if req.marker is not None and req.marker.evaluate({"extra": EXTRA}) and not req.marker.evaluate({"extra": ""}):
            out.append(req)
    return out


# Distributions that install the same module under another name.
ALIASES = {"tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tensorflow-aarch64", "tf-nightly")}


def installed_version(name: str) -> str | None:
    """The installed version, from package metadata (no import: importing TensorFlow takes seconds), else
    from the module (runtimes that ship a package without metadata, as Databricks does PySpark)."""
    for dist in ALIASES.get(name, (name,)):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    try:
        module = importlib.import_module(name.replace("-", "_"))
    except ImportError:
        return None
    return getattr(module, "__version__", None)


def problems(reqs=None) -> list[str]:
    out = []
    for req in requirements() if reqs is None else reqs:
        version = installed_version(req.name)
        spec = str(req.specifier)
        if version is None:
            out.append(f"{req.name} is not installed (needs {spec})")
        elif req.specifier and not req.specifier.contains(version, prereleases=True):
            out.append(f"{req.name} {version} is installed, sparkvision needs {spec}")
    return out


def check() -> None:
    """Raise :class:`StackError` naming every package whose installed version is outside its range."""
    found = problems()
    if found:
        raise StackError("incompatible run-time stack: " + "; ".join(found) + ". Install the ranges of "
                         "'sparkvision[stack]' (on Databricks: the bundle's task libraries or serverless environment)")
