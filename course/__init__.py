"""The tools that turn lessons/*.md into what people read: the figures (`make figures`), Jupyter
notebooks (`make notebooks`) and a static site (`make site`). Not part of minift, and not in minift/
on purpose: it is tooling for the course, not the library a user installs; minift never imports it
(tests/test_site.py checks), and what it needs
(matplotlib, jupytext, mkdocs, ...) is in the `dev` extra. It sits at the top level so that
`python -m course.NAME` runs from the repository root, where the lessons run.

    lessons.py     the one reader of lessons/NN-*.md: blocks, output blocks and their options, figure
                   blocks and their image links, a lesson run and the comparison of its outputs
                   (tests/test_lessons.py uses it; `python -m course.lessons LESSON` runs one)
    figures.py     `make figures`: reruns the lessons up to their last figure block
    notebooks.py   `make notebooks`: one .ipynb per lesson (jupytext), optionally executed
    website.py     `make site`: MkDocs builds lessons/ into build/site/ with KaTeX copied in
    katex.py       KaTeX from its npm package, cached under build/, copied into the site
    hooks.py       the MkDocs hooks: the navigation from the course map, links, output blocks
    mkdocs.yml     the site's configuration; assets/ its style sheet and the script that runs KaTeX
"""
