"""`make notebooks` (course/notebooks.py): every lesson converts to a valid notebook whose code cells are
exactly the lesson's python blocks, and notebooks run top to bottom in a real Jupyter kernel.

Running every notebook would repeat tests/test_lessons.py at the price of a kernel per lesson, so two
run here: 03 (figures drawn in the kernel) and 04 (the real checkpoint, found from the repository
root that the set-up cell moves to). `python -m course.notebooks --execute all` runs them all.
"""

import re

import pytest
from conftest import REPO, minilm_or_skip, needed_or_skip

from course.lessons import WILDCARD, lesson_files, read_lesson
from course.notebooks import convert, execute

LESSONS = lesson_files()
RUN = ["03-functional.md", "04-attention.md"]


@pytest.fixture(scope="module")
def notebooks(tmp_path_factory):
    needed_or_skip("jupytext", "it turns the lessons into notebooks")
    out = tmp_path_factory.mktemp("notebooks")
    return {lesson.name: convert(lesson, out) for lesson in LESSONS}


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.name for p in LESSONS])
def test_the_code_cells_are_the_lessons_python_blocks(lesson, notebooks):
    import nbformat

    notebook = nbformat.read(notebooks[lesson.name], as_version=4)
    nbformat.validate(notebook)
    parsed = read_lesson(lesson)
    setup, *code = [c for c in notebook.cells if c.cell_type == "code"]
    assert "setup" in setup.metadata.get("tags", []) and "os.chdir(" in setup.source
    assert [c.source.strip() for c in code] == [b.body.strip() for b in parsed.python]
    markdown = [c for c in notebook.cells if c.cell_type == "markdown"]
    assert not any("```python" in c.source for c in markdown), "a python block was left as text"
    # An output block is its code cell's output (what the cell prints), not text or code of its own.
    assert not any("```output" in c.source for c in markdown), "an output block was left as text"
    for cell, block in zip(code, parsed.python):
        shown = [o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout"]
        assert shown == ([block.output.body.replace(WILDCARD, "…")] if block.output else []), block.line
    # Every image of the lesson travels with the notebook, and no link still names a lesson's .md.
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", "\n".join(c.source for c in markdown))
    attached = {name for c in markdown for name in c.get("attachments", {})}
    assert all(i.startswith("attachment:") and i.removeprefix("attachment:") in attached for i in images)
    assert not re.search(r"\]\(\d\d-[^)]*\.md", "\n".join(c.source for c in markdown))


@pytest.mark.parametrize("name", RUN)
def test_notebook_runs_top_to_bottom(name, notebooks, monkeypatch, tmp_path):
    import nbformat

    needed_or_skip("nbclient", "it runs notebooks in a Jupyter kernel")
    needed_or_skip("ipykernel", "the python3 kernel the notebooks run in")
    text = (REPO / "lessons" / name).read_text(encoding="utf-8")
    if "all-MiniLM-L6-v2" in text:
        minilm_or_skip()
    monkeypatch.setenv("MINIFT_FIGURES_DIR", str(tmp_path / "figures"))  # the kernel inherits it
    path = notebooks[name]
    # One cell more, at the end: where the kernel ran, which the set-up cell made the repository root.
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("import os\nprint(os.getcwd())"))
    nbformat.write(notebook, path)
    execute(path, timeout=300)  # raises CellExecutionError, naming the cell, if one fails
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "a code cell did not run"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert code[-1].outputs[0].text.strip() == str(REPO), "the notebook did not run from the repository root"
    drawn = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert drawn and all(p.startswith(name[:2]) for p in drawn), drawn
