"""Reading a bundle: ``bundle.yml`` and every file its ``include`` globs match, merged as the Databricks CLI
merges them, and where each key of the merged configuration is written (:meth:`Bundle.where`), so that every
problem names the file and the YAML path, a target's override included."""

from __future__ import annotations

import copy
import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sparkvision.deploy._bundle_common import (BUNDLE_FILE, KEYED_LISTS, TARGET_SECTIONS, BundleError, deep_merge,
                                               mapping, yaml_path)


@dataclass
class Bundle:
    root: Path
    config: dict[str, Any]
    files: list[str] = field(default_factory=list)
    origin: dict[tuple[str, ...], str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)  # each file as written (anchors expanded)

    def file_of(self, path: tuple) -> str:
        """The file that defines the YAML path ``path`` (resources.jobs.X... or variables.X...)."""
        for n in (3, 2):
            if tuple(path[:n]) in self.origin:
                return self.origin[tuple(path[:n])]
        return BUNDLE_FILE

    def locate(self, path: tuple, target: str | None = None, resolved: Any = None) -> tuple[str, tuple]:
        """Where the value at ``path`` of the resolved configuration is written: ``(file, path in that file)``.

        A target's override (``targets.T.resources...``) wins over the base definition, as when the CLI
        merges them; list items of tasks, job clusters and environments are matched by their key, so
        ``tasks[2]`` of the merged job can be ``targets.dev.resources.jobs.x.tasks[0]`` of another file. Where
        no file has the whole path (a value that came from a variable), the deepest written key is named."""
        path = tuple(path)
        roots = []
        if target and path and path[0] in TARGET_SECTIONS:
            roots += [(f, ("targets", target)) for f in reversed(self.files)]
        roots += [(f, ()) for f in reversed(self.files)]
        best = None
        for rel, prefix in roots:
            node = self.raw.get(rel)
            for key in prefix:
                node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                continue
            matched, translated = _walk(node, path, resolved)
            if matched == len(path):
                return rel, prefix + translated
            if matched and (best is None or matched > best[0]):
                best = (matched, rel, prefix + translated + path[matched:])
        if best is not None and best[0] >= min(len(path), 3):
            return best[1], best[2]
        return self.file_of(path), path

    def where(self, path: tuple, target: str | None = None, resolved: Any = None) -> str:
        """``file: yaml.path`` for a problem at ``path`` of the resolved configuration."""
        rel, in_file = self.locate(path, target, resolved)
        return f"{rel}: {yaml_path(in_file)}"


def _walk(node, path: tuple, resolved) -> tuple[int, tuple]:
    """How much of ``path`` (a path in the merged configuration ``resolved``) exists in ``node`` (one file's
    data), and that much of the path as the file spells it (keyed list items by their key)."""
    out: list = []
    for i, seg in enumerate(path):
        if isinstance(seg, int):
            if not isinstance(node, list) or not isinstance(resolved, list) or seg >= len(resolved):
                return i, tuple(out)
            keyfield = KEYED_LISTS.get(path[i - 1]) if i else None
            if keyfield and isinstance(resolved[seg], dict):
                want = resolved[seg].get(keyfield)
                idx = next((j for j, item in enumerate(node) if isinstance(item, dict) and item.get(keyfield) == want), None)
            else:
                idx = seg if seg < len(node) else None
            if idx is None:
                return i, tuple(out)
            node, resolved = node[idx], resolved[seg]
            out.append(idx)
        else:
            if not isinstance(node, dict) or seg not in node:
                return i, tuple(out)
            node = node[seg]
            resolved = resolved.get(seg) if isinstance(resolved, dict) else None
            out.append(seg)
    return len(path), tuple(out)


def unshare(node):
    """A tree without shared nodes: YAML aliases (``*classic``) and merge keys (``<<: *dev``) load as one
    object in several places, and merging a target into one of them must not change the others."""
    if isinstance(node, dict):
        return {k: unshare(v) for k, v in node.items()}
    if isinstance(node, list):
        return [unshare(v) for v in node]
    return node


def read_yaml(root: Path, rel: str) -> Any:
    try:
        return unshare(yaml.safe_load((root / rel).read_text(encoding="utf-8")) or {})
    except FileNotFoundError:
        raise BundleError([f"{rel}: not found"]) from None
    except yaml.YAMLError as exc:
        raise BundleError([f"{rel}: not valid YAML: {exc}"]) from None


def load(root: str | os.PathLike = ".") -> Bundle:
    """``bundle.yml`` and every file its ``include`` globs match, merged as the CLI merges them."""
    root = Path(root)
    doc = read_yaml(root, BUNDLE_FILE)
    if not isinstance(doc, dict):
        raise BundleError([f"{BUNDLE_FILE}: the top level must be a mapping"])
    bundle = Bundle(root, doc, [BUNDLE_FILE], raw={BUNDLE_FILE: copy.deepcopy(doc)})
    problems = []
    for section in ("resources", "variables"):
        for key, value in mapping(doc.get(section)).items():
            for name in (mapping(value) if section == "resources" else {key: None}):
                bundle.origin[(section, key, name) if section == "resources" else (section, key)] = BUNDLE_FILE
    for i, pattern in enumerate(doc.get("include") or []):
        matches = sorted(glob.glob(str(root / pattern)))
        if not matches:
            problems.append(f"{BUNDLE_FILE}: include[{i}]: {pattern!r} matches no file")
        for path in matches:
            rel = os.path.relpath(path, root)
            data = read_yaml(root, rel)
            if not isinstance(data, dict):
                problems.append(f"{rel}: the top level must be a mapping")
                continue
            bundle.files.append(rel)
            bundle.raw[rel] = copy.deepcopy(data)
            problems += _merge_include(bundle, data, rel)
    if problems:
        raise BundleError(problems)
    return bundle


def _merge_include(bundle: Bundle, data: dict, rel: str) -> list[str]:
    problems = []
    for section, value in data.items():
        if section == "resources":
            for kind, items in mapping(value).items():
                dest = bundle.config.setdefault("resources", {}).setdefault(kind, {})
                for name, body in mapping(items).items():
                    if name in dest:
                        problems.append(f"{rel}: resources.{kind}.{name}: already defined in "
                                        f"{bundle.origin.get(('resources', kind, name), BUNDLE_FILE)}")
                    dest[name] = body
                    bundle.origin[("resources", kind, name)] = rel
        elif section == "variables":
            dest = bundle.config.setdefault("variables", {})
            for name, body in mapping(value).items():
                if name in dest:
                    problems.append(f"{rel}: variables.{name}: already defined in "
                                    f"{bundle.origin.get(('variables', name), BUNDLE_FILE)}")
                dest[name] = body
                bundle.origin[("variables", name)] = rel
        elif section in ("targets", "artifacts", "sync", "permissions", "presets"):
            deep_merge(bundle.config.setdefault(section, {} if isinstance(value, dict) else []), value)
        else:
            problems.append(f"{rel}: {section}: not allowed in an included file "
                            "(resources, variables, targets, artifacts, sync, permissions, presets)")
    return problems


def targets(bundle: Bundle) -> list[str]:
    return list(mapping(bundle.config.get("targets")))


def default_target(bundle: Bundle) -> str:
    defaults = [name for name, t in mapping(bundle.config.get("targets")).items() if mapping(t).get("default")]
    if len(defaults) > 1:
        raise BundleError([f"{BUNDLE_FILE}: targets: more than one default target ({', '.join(defaults)})"])
    if defaults:
        return defaults[0]
    names = targets(bundle)
    if not names:
        raise BundleError([f"{BUNDLE_FILE}: targets: no target defined"])
    return names[0]


def target_mode(bundle: Bundle, target: str) -> str | None:
    """The target's ``mode`` (development, production) or None."""
    return mapping(mapping(bundle.config.get("targets")).get(target)).get("mode")
