"""The docs cite only files in the repository: every path that README.md
and docs/**/*.md name (a ``.py`` file, or a path under one of the
repository's folders) exists. The docs site's build checks links, not the
paths written in prose and code spans; a file moved without its docs
(tests moved to ``tests/unit/<folder>/``) left three such names behind."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The repository's folders a path in the docs starts from.
FOLDERS = ("flask_signalr_kafka", "tests", "testkit", "loadtests", "docs", "sample_app",
           "dev-tools")
#: Written by the tools at run time, not kept in git (.gitignore).
OUTPUTS = ("loadtests/results/logs/", "docs/_build/")
#: A path: folders, then a name with an extension, or a folder ending in ``/``.
PATH = re.compile(r"(?<![\w./:<>*-])((?:\.\./)*(?:[\w.-]+/)*[\w.-]+(?:\.\w+|/))(?![\w/*<-])")


def named_paths(text: str) -> list[str]:
    """The repository paths ``text`` names: a ``.py`` file (bare, or from a
    package folder: ``wire/records.py``) or any path under :data:`FOLDERS`
    or ``../``; not a pattern (``fleet-*.md``, ``bench-<time>.md``) nor a
    part of a URL."""
    out = []
    for match in PATH.finditer(text):
        path = match.group(1)
        if path.endswith(".py") or path.startswith(FOLDERS) or path.startswith("../"):
            if path.startswith(FOLDERS) and "/" not in path:  # a module, `flask_signalr_kafka.x`
                continue
            out.append(path)
    return out


def missing(page: Path, files: set[str], names: set[str]) -> list[str]:
    gone = []
    for path in named_paths(page.read_text()):
        if path.startswith(OUTPUTS):
            continue
        if "/" not in path:
            found = path in names  # a bare module name: anywhere in the repository
        else:
            found = (ROOT / path).exists() or (page.parent / path).exists() or any(
                f.endswith("/" + path) for f in files)  # from a package folder (`wire/records.py`)
        if not found:
            gone.append(path)
    return gone


def repository_files() -> set[str]:
    skip = {".git", ".venv", "node_modules", "_build", "__pycache__", "jars"}
    return {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts)}


def test_the_finder_sees_the_paths_a_page_names():
    text = ("`tests/unit/transport/test_topics.py` checks it; see wire/records.py,\n"
            "`testkit/`, [x](../README.md) and `docs/fleet.md`; not "
            "flask_signalr_kafka.wire.records, "
            "`loadtests/results/bench-<time>.md`, `fleet-*.md`, Node.js, "
            "https://github.com/x/y/blob/main/setup.py")
    assert named_paths(text) == ["tests/unit/transport/test_topics.py", "wire/records.py",
                                 "testkit/", "../README.md", "docs/fleet.md"]


def test_every_path_the_docs_name_exists():
    files = repository_files()
    names = {f.rsplit("/", 1)[-1] for f in files}
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    pages = [p for p in pages if "_build" not in p.parts]
    assert len(pages) > 10
    gone = {p.relative_to(ROOT).as_posix(): m for p in pages if (m := missing(p, files, names))}
    assert not gone, f"the docs name files that do not exist: {gone}"
