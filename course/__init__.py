"""The tools that turn lessons/*.md into what people read: the figures (`make figures`), Jupyter
notebooks (`make notebooks`) and a static site (`make site`). Not part of minift: minift never imports
this package, and what it needs (matplotlib, jupytext, mkdocs, ...) is in the `dev` extra.

    lessons.py     what a lesson holds: its python blocks, its figure blocks and their image links
    figures.py     `make figures`: reruns the lessons up to their last figure block
    notebooks.py   `make notebooks`: one .ipynb per lesson (jupytext), optionally executed
    website.py     `make site`: MkDocs builds lessons/ into build/site/ with KaTeX copied in
    katex.py       KaTeX from its npm package, cached under build/, copied into the site
    hooks.py       the MkDocs hooks: the navigation from the course map, links, output blocks
    mkdocs.yml     the site's configuration; assets/ its style sheet and the script that runs KaTeX
"""
