"""Sphinx configuration of the book: the executed notebooks (docs/executed/, written by `make executed`) rendered
from their stored outputs by myst-nb, never re-executed. Build with `make book` (docs/_build/html/index.html)."""

project = "Unrolling SGD, notebook by notebook"
author = "the unrolling-sgd contributors"
copyright = "the unrolling-sgd contributors, MIT licence"

extensions = ["myst_nb"]
nb_execution_mode = "off"  # read the outputs stored in docs/executed/; never run a notebook here
nb_merge_streams = True  # one block per cell for stdout, however many prints wrote it
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "**/.*.tmp"]
# Notebook prose may skip a heading level, and a notebook's first heading is its page title.
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]

html_theme = "sphinx_book_theme"
html_title = "Unrolling SGD"
html_theme_options = {
    "repository_url": "https://github.com/unrolling-sgd/unrolling-sgd",
    "repository_branch": "main",
    "path_to_docs": "docs",
    "use_repository_button": True,
    "show_toc_level": 2,
}
html_last_updated_fmt = None
html_show_sourcelink = False
