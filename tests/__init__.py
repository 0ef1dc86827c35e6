"""Tests mirror the source tree. Paths into the checkout go through REPO, so the suite runs from any folder."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "jobs" / "configs"
