"""Keep what validation needs from an upstream CustomResourceDefinition: the openAPIV3Schema of
each served version, without its `description` texts (most of a CRD's size), as JSON.

Usage: python deploy/crds/extract.py CRD.yaml...   (writes <group>_<plural>.<version>.json here)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


def without_descriptions(node: Any) -> Any:
    """The schema with every `description` dropped: a field named "description" (under
    `properties`) is kept, only the keyword goes."""
    if isinstance(node, list):
        return [without_descriptions(item) for item in node]
    if not isinstance(node, dict):
        return node
    kept = {}
    for key, value in node.items():
        if key == "properties":
            kept[key] = {name: without_descriptions(field) for name, field in value.items()}
        elif key != "description":
            kept[key] = without_descriptions(value)
    return kept


def extract(crd_file: Path) -> list[Path]:
    written = []
    for crd in yaml.safe_load_all(crd_file.read_text()):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for version in spec["versions"]:
            if not version.get("served"):
                continue
            schema = without_descriptions(version["schema"]["openAPIV3Schema"])
            out = HERE / f"{spec['group']}_{spec['names']['plural']}.{version['name']}.json"
            out.write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")
            written.append(out)
    return written


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        for path in extract(Path(argument)):
            print(path.relative_to(HERE))
