"""Where the tests find the repository, and the shared data and specs beside it."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
SPECS = REPO.parent / "shared" / "spec"
