"""Where the kustomizations live (a module, not conftest, so tests can import it by name)."""

from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUSTOMIZATIONS = ("service", "jobs/index", "jobs/batch")
