"""Render the kustomizations under deploy/ in Python, so the manifests are checked offline.

kustomize is not installable from PyPI or Debian (Debian's kubectl is too old for components
and replacements), so this implements exactly the subset deploy/ uses: resources (files and
directories), components, configMapGenerator without name hashes, images, replacements, and
dropping `config.kubernetes.io/local-config` objects. Anything else raises, so a manifest that
starts using another feature fails loudly here instead of being checked wrongly. Where
`kubectl` is on PATH, tests/deploy/test_render.py checks this renderer against it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

_SUPPORTED_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "configMapGenerator",
    "images",
    "replacements",
}
_LOCAL_CONFIG = "config.kubernetes.io/local-config"


class UnsupportedKustomizationError(ValueError):
    """deploy/ uses a kustomize feature this renderer does not implement."""


def render(directory: Path) -> list[Resource]:
    """The objects `kubectl kustomize directory` prints, in no particular order."""
    resources = _build(Path(directory), [], expect_kind="Kustomization")
    return [r for r in resources if _annotations(r).get(_LOCAL_CONFIG) != "true"]


def _build(directory: Path, resources: list[Resource], expect_kind: str) -> list[Resource]:
    """Add `directory`'s resources to `resources`, then generate and transform (a component
    transforms everything accumulated before it, which is what makes it a shared setting)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - _SUPPORTED_KEYS
    if unknown:
        raise UnsupportedKustomizationError(f"{directory}: unsupported fields {sorted(unknown)}")
    if kustomization.get("kind", "Kustomization") != expect_kind:
        raise UnsupportedKustomizationError(f"{directory}: expected a {expect_kind}")
    resources = list(resources)
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources += _build(path, [], "Kustomization")
        else:
            resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for entry in kustomization.get("components", []):
        resources = _build(directory / entry, resources, "Component")
    resources += [_config_map(g) for g in kustomization.get("configMapGenerator", [])]
    for image in kustomization.get("images", []):
        for resource in resources:
            _set_images(resource, image)
    for replacement in kustomization.get("replacements", []):
        _replace(replacement, resources)
    return resources


def _config_map(generator: dict[str, Any]) -> Resource:
    options = generator.get("options", {})
    if not options.get("disableNameSuffixHash") or set(generator) - {"name", "options", "literals"}:
        raise UnsupportedKustomizationError(
            f"configMapGenerator {generator['name']}: only literals with disableNameSuffixHash"
        )
    metadata: dict[str, Any] = {"name": generator["name"]}
    if options.get("annotations"):
        metadata["annotations"] = dict(options["annotations"])
    data = dict(literal.split("=", 1) for literal in generator["literals"])
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def _set_images(node: Any, image: dict[str, str]) -> None:
    """Every `containers[].image` anywhere in the object, as kustomize's images transformer."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    if container.get("image") == image["name"]:
                        container["image"] = f"{image['newName']}:{image['newTag']}"
            _set_images(value, image)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, image)


def _replace(replacement: dict[str, Any], resources: list[Resource]) -> None:
    source = replacement["source"]
    (origin,) = [r for r in resources if _selected(r, source)]
    value = _get(origin, _split(source["fieldPath"]))
    for target in replacement["targets"]:
        options = target.get("options", {})
        if set(target) - {"select", "fieldPaths", "options"} or set(options) - {
            "delimiter",
            "index",
        }:
            raise UnsupportedKustomizationError(f"replacement target options: {target}")
        for resource in (r for r in resources if _selected(r, target["select"])):
            for field_path in target["fieldPaths"]:
                _put(resource, _split(field_path), value, options)


def _selected(resource: Resource, selector: dict[str, str]) -> bool:
    return resource["kind"] == selector["kind"] and selector.get("name") in (
        None,
        resource["metadata"]["name"],
    )


def _split(field_path: str) -> list[str]:
    """`a.b.[k=v].c\\.d` -> ["a", "b", "[k=v]", "c.d"]."""
    parts = re.split(r"(?<!\\)\.", field_path)
    return [p.replace("\\.", ".") for p in parts]


def _step(node: Any, part: str) -> Any:
    match = re.fullmatch(r"\[(.+)=(.+)\]", part)
    if match:
        key, wanted = match.groups()
        (item,) = [i for i in node if str(i.get(key)) == wanted]
        return item
    return node[part]


def _get(node: Any, parts: list[str]) -> Any:
    for part in parts:
        node = _step(node, part)
    return node


def _put(node: Any, parts: list[str], value: str, options: dict[str, Any]) -> None:
    """Set an existing field, keeping its YAML type as kustomize does (int stays int); with a
    `delimiter`, only the word at `index` of the field's string (an index outside it, which
    kustomize would prepend or append, is refused here)."""
    parent = _get(node, parts[:-1])
    old = parent[parts[-1]]
    if "delimiter" in options:
        words = old.split(options["delimiter"])
        if not 0 <= options["index"] < len(words):
            raise UnsupportedKustomizationError(f"word {options['index']} of {old!r}")
        words[options["index"]] = str(value)
        parent[parts[-1]] = options["delimiter"].join(words)
        return
    parent[parts[-1]] = int(value) if isinstance(old, int) else value


def _annotations(resource: Resource) -> dict[str, str]:
    return resource.get("metadata", {}).get("annotations") or {}
