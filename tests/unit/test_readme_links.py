"""The README is not part of the docs site (whose build fails on a broken
link): its relative links are checked here."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_relative_link_of_the_readme_exists():
    text = (ROOT / "README.md").read_text()
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text)]
    local = [t for t in targets if t and "://" not in t]
    assert local, "the README links no page of the repository"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_the_readme_is_a_landing_page():
    # The user guide lives in docs/guide; the README points into it.
    assert len((ROOT / "README.md").read_text().splitlines()) < 250
