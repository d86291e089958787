"""Helpers of the deployment checks: the repository's deploy/ tree, loaded as data."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"


def load_script(path: Path):
    """Import a generator script of deploy/ (scripts, not packages) as a module named after its file."""
    if path.stem in sys.modules:
        return sys.modules[path.stem]
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses and sibling imports look modules up here
    spec.loader.exec_module(module)
    return module


def yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def base_documents() -> list[dict]:
    """Every manifest the kustomize base lists, read straight from the files (no kustomize needed)."""
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    docs: list[dict] = []
    for rel in kustomization["resources"]:
        docs.extend(yaml_docs(K8S / "base" / rel))
    return docs


def kustomize_build(target: Path) -> list[dict]:
    """``kubectl kustomize`` of a base or overlay; skips when kubectl is not installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: kustomize builds not checked (apt-get install kubectl)")
    out = subprocess.run([kubectl, "kustomize", str(target)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}
