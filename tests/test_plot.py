"""`minift plot` (minift/plot.py): what is drawn is what the run logged, the PNG is a real PNG of the
expected size, and a bad run directory or metrics.jsonl line gets one message naming the file:line."""

import json
import math
import sys

import numpy as np
import pytest
from tests_support import write_tiny_bert, write_tiny_dataset

from minift.cli import main
from minift.plot import MetricsFileError, MissingDependencyError, make_figure, plot_run, read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_log(folder, records) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def train_line(step, loss, lr):
    return {"event": "train", "epoch": 1, "step": step, "loss": loss, "lr": lr, "grad_norm": 0.5,
            "examples_per_s": 12.0}


def drawn(fig) -> dict[str, np.ndarray]:
    """label -> (n, 2) array of the (step, value) points of every line of the figure, twin axes too."""
    return {line.get_label(): line.get_xydata() for ax in fig.axes for line in ax.get_lines()}


@pytest.fixture
def classification_log(tmp_path):
    """A hand-written log shaped like the loop's: eval at step 0, train lines, eval after each epoch."""
    rng = np.random.default_rng(0)
    records = [{"event": "eval", "epoch": 0, "step": 0, "loss": 0.71, "accuracy": 0.5, "macro_f1": 0.33,
                "examples": 32}]
    for step in range(1, 13):
        records.append(train_line(step, float(rng.uniform(0.1, 0.8)), float(rng.uniform(0, 1e-4))))
        if step % 6 == 0:
            records.append({"event": "eval", "epoch": step // 6, "step": step,
                            "loss": float(rng.uniform(0.2, 0.7)), "accuracy": float(rng.uniform(0.5, 1)),
                            "macro_f1": float(rng.uniform(0.3, 1)), "examples": 32})
    records.append({"event": "early_stop", "epoch": 2, "step": 12, "best_epoch": 1, "accuracy": 0.9})
    write_log(tmp_path / "run", records)
    return tmp_path / "run", records


def test_the_figure_draws_exactly_the_logged_values(classification_log):
    pytest.importorskip("matplotlib")
    run_dir, records = classification_log
    fig = make_figure(*read_metrics(run_dir))
    lines = drawn(fig)
    train = [r for r in records if r["event"] == "train"]
    evals = [r for r in records if r["event"] == "eval"]
    # Plotting copies the logged floats into float64 arrays unchanged: equality, tolerance 0.
    assert lines["train loss"].tolist() == [[r["step"], r["loss"]] for r in train]
    assert lines["lr"].tolist() == [[r["step"], r["lr"]] for r in train]
    for name in ("accuracy", "macro_f1", "loss"):
        assert lines[f"dev {name}"].tolist() == [[r["step"], r[name]] for r in evals], name
    # examples is a count, not a metric; early_stop lines are not evaluations
    assert set(lines) == {"train loss", "lr", "dev accuracy", "dev macro_f1", "dev loss"}
    assert len(fig.axes) == 4  # three panels, plus the dev panel's log-scaled loss axis
    loss_axes = [ax for ax in fig.axes if "dev loss" in [line.get_label() for line in ax.get_lines()]]
    assert [ax.get_yscale() for ax in loss_axes] == ["log"]


def test_lm_log_gaps_at_non_finite_perplexity(tmp_path):
    pytest.importorskip("matplotlib")
    # json.dumps writes math.inf as Infinity (minift/train/tasks/causal_lm.py logs it when the loss overflows)
    ppl = math.exp(6.5)
    records = [train_line(1, 9.5, 1e-3), train_line(2, 7.25, 5e-4),
               {"event": "eval", "epoch": 0, "step": 0, "loss": 800.0, "perplexity": math.inf, "tokens": 9},
               {"event": "eval", "epoch": 1, "step": 2, "loss": 6.5, "perplexity": ppl, "tokens": 9}]
    write_log(tmp_path, records)
    fig = make_figure(*read_metrics(tmp_path))
    lines = drawn(fig)
    assert set(lines) == {"train loss", "lr", "dev loss", "dev perplexity"}
    assert lines["dev loss"].tolist() == [[0, 800.0], [2, 6.5]]
    drawn_ppl = lines["dev perplexity"]
    assert drawn_ppl[0, 0] == 0 and math.isnan(drawn_ppl[0, 1]) and drawn_ppl[1].tolist() == [2, ppl]
    assert len(fig.axes) == 3  # only lower-is-better metrics: they take the dev panel's own axis


def test_run_without_dev_set_or_without_train_lines(tmp_path):
    pytest.importorskip("matplotlib")
    write_log(tmp_path, [train_line(10, 0.5, 1e-4), train_line(20, 0.25, 5e-5)])  # finetune without --dev
    fig = make_figure(*read_metrics(tmp_path))
    assert {k: v.tolist() for k, v in drawn(fig).items()} == {"train loss": [[10, 0.5], [20, 0.25]],
                                                             "lr": [[10, 1e-4], [20, 5e-5]]}
    assert fig.axes[2].get_title() == "no dev evaluation logged"
    write_log(tmp_path, [{"event": "eval", "epoch": 0, "step": 0, "accuracy": 0.5}])  # killed before step 10
    fig = make_figure(*read_metrics(tmp_path))
    assert drawn(fig)["dev accuracy"].tolist() == [[0, 0.5]] and drawn(fig)["train loss"].size == 0
    assert fig.axes[0].get_title() == "no train lines logged"


def test_png_is_valid_and_of_the_expected_size(classification_log):
    matplotlib_image = pytest.importorskip("matplotlib.image")
    run_dir, _ = classification_log
    for dpi, out in ((80, None), (50, run_dir / "sub" / "small.png")):
        png = plot_run(run_dir, out, dpi=dpi)
        assert png == (out or run_dir / "curves.png")
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        pixels = matplotlib_image.imread(png)
        assert pixels.shape == (round(7.5 * dpi), round(8 * dpi), 4)  # figsize (8, 7.5) inches, RGBA
        assert pixels[..., :3].std() > 0.05  # something is drawn, not a blank canvas


@pytest.mark.parametrize("lines,where,message", [
    (['{"event": "train", "step": 1, "loss": 0.5, "lr": 1e-4}', '{"event": "eval", "step": 1,'], 2,
     "not a JSON line"),
    (["", '{"event": "eval", "step": 0, "accuracy": 0.5}', "[1, 2]"], 3, 'JSON object with an "event" key'),
    (['{"event": "train", "step": 1, "loss": 0.5}'], 1, "needs a number for 'lr'"),
    (['{"event": "eval", "step": "3", "accuracy": 0.5}'], 1, "needs a number for 'step'"),
    (['{"event": "train", "step": 1, "loss": true, "lr": 1e-4}'], 1, "needs a number for 'loss'"),
])
def test_malformed_line_is_named_by_file_and_line(tmp_path, lines, where, message):
    write_log(tmp_path, lines)
    with pytest.raises(MetricsFileError, match=message) as info:
        read_metrics(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'metrics.jsonl'}:{where}: ")


def test_missing_run_dir_file_and_empty_log(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"run directory {tmp_path / 'nope'} does not exist"):
        read_metrics(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'metrics.jsonl'} not found"):
        read_metrics(tmp_path)
    write_log(tmp_path, ['{"event": "early_stop", "step": 3}'])
    with pytest.raises(MetricsFileError, match="holds no train or eval line"):
        read_metrics(tmp_path)


def test_without_matplotlib_the_error_says_what_to_install(classification_log, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'minift\[plot\]'"):
        plot_run(classification_log[0])


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_errors_are_one_line_without_traceback(tmp_path, capsys):
    write_log(tmp_path, [json.dumps(train_line(1, 0.5, 1e-4)), "oops"])
    code, out, err = run_cli(capsys, "plot", tmp_path)
    assert code == 1 and out == "" and "Traceback" not in err
    assert err.startswith("minift plot: error: ") and f"{tmp_path / 'metrics.jsonl'}:2:" in err
    code, _, err = run_cli(capsys, "plot", tmp_path / "nope")
    assert code == 1 and "nope does not exist" in err
    write_log(tmp_path, [json.dumps(train_line(1, 0.5, 1e-4))])
    code, _, err = run_cli(capsys, "plot", tmp_path, "--out", tmp_path / "curves.svg")
    assert code == 1 and "must name a .png file" in err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real (tiny) `minift finetune` run: 96 examples, batch 8, 2 epochs = 24 steps, logged every 10."""
    root = tmp_path_factory.mktemp("plot-run")
    model = write_tiny_bert(root / "model")
    write_tiny_dataset(root / "train.tsv", 96, 0)
    write_tiny_dataset(root / "dev.tsv", 16, 1)
    code = main(["finetune", "--model", str(model), "--train", str(root / "train.tsv"), "--dev",
                 str(root / "dev.tsv"), "--out", str(root / "out"), "--epochs", "2", "--batch-size", "8",
                 "--lr", "1e-3", "--quiet", "--device", "cpu"])
    assert code == 0
    return root / "out"


def test_cli_plots_a_real_run(tiny_run, capsys):
    pytest.importorskip("matplotlib")
    code, out, _ = run_cli(capsys, "plot", tiny_run)
    assert code == 0
    assert json.loads(out.strip().splitlines()[-1]) == {"png": str(tiny_run / "curves.png")}
    assert (tiny_run / "curves.png").read_bytes()[:8] == PNG_SIGNATURE
    logged = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logged if r["event"] == "train"]
    evals = [r for r in logged if r["event"] == "eval"]
    assert [r["step"] for r in train] == [10, 20, 24] and [r["step"] for r in evals] == [0, 12, 24]
    lines = drawn(make_figure(*read_metrics(tiny_run)))
    assert lines["train loss"].tolist() == [[r["step"], r["loss"]] for r in train]  # tolerance 0: a copy
    assert lines["lr"].tolist() == [[r["step"], r["lr"]] for r in train]
    for name in ("loss", "accuracy", "macro_f1"):
        assert lines[f"dev {name}"].tolist() == [[r["step"], r[name]] for r in evals], name


def png_chunks(data: bytes) -> list[bytes]:
    """The chunk types of a PNG file, in order (IHDR, ..., IEND)."""
    assert data[:8] == PNG_SIGNATURE
    chunks, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        chunks.append(data[at + 4:at + 8])
        at += 12 + length
    return chunks


def test_save_figure_writes_the_same_bytes_and_no_metadata(tmp_path, monkeypatch):
    """The lessons' figures (make figures) are committed: a redraw must give the same bytes, and the
    file must not name the matplotlib version (a tEXt "Software" chunk would)."""
    pytest.importorskip("matplotlib")
    from minift.plot import save_figure

    monkeypatch.delenv("MINIFT_FIGURES_DIR", raising=False)

    def draw(path):
        fig = make_figure([train_line(s, 1.0 / s, 1e-4) for s in range(1, 6)], [])
        return save_figure(fig, path)

    first, second = draw(tmp_path / "a" / "one.png"), draw(tmp_path / "two.png")
    assert first.read_bytes() == second.read_bytes()
    chunks = png_chunks(first.read_bytes())
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND"
    assert not {b"tEXt", b"zTXt", b"iTXt", b"tIME"} & set(chunks), chunks
    monkeypatch.setenv("MINIFT_FIGURES_DIR", str(tmp_path / "elsewhere"))  # what the test suite sets
    assert draw("lessons/figures/never-written.png") == tmp_path / "elsewhere" / "never-written.png"
    assert (tmp_path / "elsewhere" / "never-written.png").is_file()
    with pytest.raises(ValueError, match="PNG"):
        draw(tmp_path / "figure.svg")
