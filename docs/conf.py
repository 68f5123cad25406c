"""Sphinx configuration of VennCell's documentation site (``sphinx-build -W -b html docs docs/_build/html``)."""

from importlib.metadata import version as _version

project = "VennCell"
author = "The VennCell developers"
release = _version("venncell")
extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "build_error_table.py", "build_reliability_table.py"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False}
myst_heading_anchors = 3
suppress_warnings = ["myst.header", "myst.xref_missing"]
html_theme = "alabaster"
html_title = "VennCell"
