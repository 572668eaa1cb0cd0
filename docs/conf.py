"""Sphinx configuration of the docs site (``make docs``: docs/_build/html).

The pages are Markdown (MyST); the API reference is generated from the
package's reST docstrings (autodoc). Warnings are errors in ``make docs``,
so a broken link or a reference to a name that no longer exists fails the
build.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flask_signalr_kafka  # noqa: E402

project = "flask-signalr-kafka"
author = "The flask-signalr-kafka developers"
copyright = "2026, " + author
release = version = flask_signalr_kafka.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
# docs/README.md is the folder's index on a code host; the site has index.md.
exclude_patterns = ["_build", "README.md"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
# Names of libraries the signatures mention; their own docs are not linked.
nitpicky = False

html_theme = "furo"
html_title = f"flask-signalr-kafka {release}"
