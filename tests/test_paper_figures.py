"""eval.py's figures and tables as a paper needs them (issue 26): every figure in the formats asked for
(PNG at --dpi, PDF, SVG), counts in the confusion cells, classes in their natural order (or the user's),
a colour scale of clips where there is no error, Figure 3's title saying which classes it shows (none
dropped), captions that match the table's rows, and one file per table.

The runs are hand-written run folders (run.json, results.json, log.jsonl) whose test features are
synthetic (eval.run_test_features patched), so that every command runs in about a second; the figures
themselves are drawn by matplotlib as for a real run."""
import json
import struct
import xml.etree.ElementTree as ElementTree
from collections import Counter

import numpy as np
import pytest

import figures
from test_eval import ev, run_table, write_run

pytest.importorskip("matplotlib")

# FSDD's classes as a user's folder names them: runs number them alphabetically (eight, five, four, ...)
DIGITS = "zero one two three four five six seven eight nine".split()
STORED = sorted(DIGITS)  # the order of a run's "classes" and of its confusion matrix


def png_size(path):
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", raw[16:24])


def assert_vector_files(png):
    """The .pdf and .svg beside `png` are a PDF and an SVG document."""
    assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    root = ElementTree.parse(png.with_suffix(".svg")).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"


def confusion_of(pairs, classes):
    """The confusion matrix counted from (true, predicted) name pairs, rows and columns in `classes`' order."""
    counts = Counter(pairs)
    return [[counts[(true, predicted)] for predicted in classes] for true in classes]


def predictions(errors=()):
    """(true, predicted) of 3 test clips a class, all right but for the (true, predicted) `errors` added."""
    return [(name, name) for name in DIGITS for _ in range(3)] + list(errors)


def write_tree(root, pairs, seeds=(0,)):
    """runs/digits/tiny/{finetune,pairtune}/seed-N as finetune.py and pairtune.py + probe.py leave them: run.json,
    results.json (the pairtune run's in probe/), log.jsonl; test confusion counted from `pairs`."""
    confusion = confusion_of(pairs, STORED)
    for arm in ("finetune", "pairtune"):
        for seed in seeds:
            run_dir = root / f"digits/tiny/{arm}/seed-{seed}"
            results_dir = run_dir / "probe" if arm == "pairtune" else run_dir
            results_dir.mkdir(parents=True)
            run = {"stage": arm, "method": arm, "dataset": "digits", "backbone": "tiny", "classes": STORED,
                   "args": {"seed": seed, "fold": None}, "finished": True}
            (run_dir / "run.json").write_text(json.dumps(run))
            if arm == "pairtune":
                (results_dir / "run.json").write_text(json.dumps({**run, "stage": "probe"}))
            (results_dir / "results.json").write_text(json.dumps({
                "method": arm, "dataset": "digits", "backbone": "tiny", "seed": seed, "fold": None,
                "test_acc": 0.9, "classes": STORED, "confusion": confusion}))
            (run_dir / "log.jsonl").write_text("".join(json.dumps({"epoch": e, "valid_acc": 0.5 + 0.1 * e}) + "\n"
                                                       for e in (1, 2, 3)))
    return root


@pytest.fixture
def synthetic_features(monkeypatch):
    """eval.run_test_features of any run: 4 test clips a class around one direction per class; and Figure 3
    projected by PCA, as `--method pca` does (the report has no --method: UMAP's first call takes seconds)."""
    def features(run_dir, device="auto", data_root=None):
        rng = np.random.default_rng(0)
        labels = np.repeat(np.arange(len(STORED)), 4)
        return np.eye(len(STORED))[labels] * 3 + rng.normal(size=(len(labels), len(STORED))), labels, STORED
    monkeypatch.setattr(ev, "run_test_features", features)
    project = ev.project_2d
    monkeypatch.setattr(ev, "project_2d", lambda points, method="auto", seed=0: project(points, "pca", seed))


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures eval.py saves, caught just before they are rendered and closed."""
    caught = []
    save = figures.save_figure

    def catch(plt, fig, *args, **kwargs):
        caught.append(fig)
        return save(plt, fig, *args, **kwargs)
    monkeypatch.setattr(figures, "save_figure", catch)
    return caught


# ----------------------------------------------------------------------------------------------
# --format and --dpi, for every figure eval.py writes
# ----------------------------------------------------------------------------------------------

def test_every_figure_command_writes_the_formats_and_the_dpi_asked_for(tmp_path, synthetic_features, capsys):
    runs = write_tree(tmp_path / "runs", predictions([("one", "seven"), ("seven", "one"), ("five", "nine"),
                                                      ("nine", "five"), ("three", "eight")]), seeds=(0, 1))
    shots = tmp_path / "shots"
    for seed in (0, 1):
        path = write_run(shots, f"ft/shots-4/s{seed}", seed=seed, test_acc=0.5 + seed / 10, knn_test_acc=0.4)
        run = json.loads((path.parent / "run.json").read_text())
        run["args"]["shots"] = 4  # as finetune.py records a --shots run
        (path.parent / "run.json").write_text(json.dumps(run))
    ft, pt = runs / "digits/tiny/finetune/seed-0", runs / "digits/tiny/pairtune/seed-0"
    commands = {  # name: (arguments before --format/--dpi, the PNG it writes under OUT)
        "confusion": (["confusion", str(ft), "--out", "{out}"], "confusion.png"),
        "projection": (["projection", "--finetune", str(ft), "--pairtune", str(pt), "--method", "pca",
                        "--out", "{out}/fig3.png"], "fig3.png"),
        "curves": (["curves", str(runs), "--out", "{out}"], "curves-digits-tiny.png"),
        "shots": (["curves", "--shots", str(shots), "--out", "{out}"], "shots-gtzan-wav2vec2.png"),
    }
    sizes = {}
    for name, (arguments, png) in commands.items():
        for dpi, extra in (("100", ["--format", "png,pdf,svg", "--dpi", "100"]), ("200", [])):  # 200: the default
            out = tmp_path / f"{name}-{dpi}"
            assert ev.main([a.replace("{out}", str(out)) for a in arguments] + extra) == 0, name
            sizes.setdefault(name, {})[dpi] = png_size(out / png)
            if dpi == "100":
                assert_vector_files(out / png)
            else:  # PNG only unless asked
                assert not (out / png).with_suffix(".pdf").exists() and not (out / png).with_suffix(".svg").exists()
        width, height = sizes[name]["100"]  # the same figure in inches at twice the dots per inch
        assert abs(sizes[name]["200"][0] - 2 * width) <= 1 and abs(sizes[name]["200"][1] - 2 * height) <= 1, sizes
    # the report: the same figures, in every format asked for, the PNGs at 3 times 100 dpi
    out = tmp_path / "report"
    assert ev.main(["report", str(runs), "--out", str(out), "--device", "cpu", "--format", "svg,png,pdf",
                    "--dpi", "300"]) == 0
    for png, name in (("confusion-digits-tiny-finetune.png", "confusion"), ("confusion-digits-tiny-pairtune.png",
                      "confusion"), ("curves-digits-tiny.png", "curves"), ("umap-digits-tiny.png", "projection")):
        assert_vector_files(out / png)
        width, height = sizes[name]["100"]
        assert abs(png_size(out / png)[0] - 3 * width) <= 1 and abs(png_size(out / png)[1] - 3 * height) <= 1, png
    # report.md shows each figure from its SVG (the first it can show of those asked for) and links the others
    assert ("![curves](curves-digits-tiny.svg) Also as [PNG](curves-digits-tiny.png), [PDF](curves-digits-tiny.pdf)."
            in (out / "report.md").read_text())
    capsys.readouterr()
    assert ev.main(["projection", "--finetune", str(ft), "--pairtune", str(pt), "--method", "pca",
                    "--out", str(tmp_path / "alone/fig3.pdf")]) == 0  # the format of --out's suffix
    assert sorted(p.name for p in (tmp_path / "alone").glob("fig3.*")) == ["fig3.json", "fig3.pdf"]
    with pytest.raises(SystemExit):
        ev.main(["curves", str(runs), "--out", str(tmp_path / "bad"), "--format", "jpeg"])
    assert "the formats are png, pdf, svg" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# The confusion heatmap: counts, natural class order, a colour scale where there are no errors
# ----------------------------------------------------------------------------------------------

def cell_texts(ax):
    """{(row, column): text} of the numbers written in the heatmap's cells."""
    return {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}


def test_confusion_cells_show_their_counts_with_the_classes_in_natural_order(tmp_path, drawn, capsys):
    pairs = predictions([("eight", "three")] * 2 + [("three", "eight"), ("one", "seven"), ("zero", "nine")])
    runs = write_tree(tmp_path, pairs)
    assert ev.main(["confusion", str(runs / "digits/tiny/finetune/seed-0"), "--out", str(tmp_path / "c")]) == 0
    ax = drawn[-1].axes[0]
    assert [label.get_text() for label in ax.get_xticklabels()] == DIGITS  # zero, one, ..., nine
    assert [label.get_text().split()[0] for label in ax.get_yticklabels()] == DIGITS
    counts = Counter(pairs)
    assert cell_texts(ax) == {(r, c): str(counts[(true, predicted)])
                              for r, true in enumerate(DIGITS) for c, predicted in enumerate(DIGITS)}
    assert ax.images[0].get_clim() == (0, 2)  # the most clips of one error: eight heard as three, twice
    printed = capsys.readouterr().out.splitlines()
    rows = [line.split()[0] for line in printed[printed.index("rows: true class, columns: predicted (in the same "
                                                              "order)") + 1:][:10]]
    assert rows == DIGITS  # the printed matrix in the figure's order too
    saved = json.loads((tmp_path / "c/confusion.json").read_text())
    assert saved["classes"] == STORED and saved["display_order"] == DIGITS  # the numbers stay in the runs' order

    # the user's order: the names given first, the others after them in natural order
    assert ev.main(["confusion", str(runs / "digits/tiny/finetune/seed-0"), "--out", str(tmp_path / "c2"),
                    "--class-order", "nine,eight"]) == 0
    ax = drawn[-1].axes[0]
    assert [label.get_text() for label in ax.get_xticklabels()] == ["nine", "eight"] + DIGITS[:8]
    (tmp_path / "order.txt").write_text("five\nfour\n")
    assert ev.main(["confusion", str(runs / "digits/tiny/finetune/seed-0"), "--out", str(tmp_path / "c3"),
                    "--class-order", str(tmp_path / "order.txt")]) == 0
    assert [label.get_text() for label in drawn[-1].axes[0].get_xticklabels()][:3] == ["five", "four", "zero"]
    capsys.readouterr()
    assert ev.main(["confusion", str(runs / "digits/tiny/finetune/seed-0"), "--out", str(tmp_path / "c4"),
                    "--class-order", "nine,kazoo"]) == 1
    assert capsys.readouterr().err.startswith("error: --class-order: unknown class(es) kazoo")


def test_a_confusion_without_errors_gets_a_colour_scale_of_clips(tmp_path, drawn):
    runs = write_tree(tmp_path, predictions())
    assert ev.main(["confusion", str(runs / "digits/tiny/finetune/seed-0"), "--out", str(tmp_path / "c")]) == 0
    figure = drawn[-1]
    assert figure.axes[0].images[0].get_clim() == (0, 3)  # 0 to the most clips in a cell, not to 1e-9
    ticks = figure.axes[1].get_yticks()
    assert list(ticks) == [int(t) for t in ticks] and {0, 3} <= set(ticks)  # whole clips
    assert set(cell_texts(figure.axes[0]).values()) == {"0", "3"}


@pytest.mark.parametrize("names, natural", [
    (["10", "2", "1", "0"], ["0", "1", "2", "10"]),
    (["take10", "take2", "Take1"], ["Take1", "take2", "take10"]),
    (STORED, DIGITS),
    (["twenty", "eleven", "ninety", "nine", "dog"], ["nine", "eleven", "twenty", "ninety", "dog"]),
    (["sine", "chord", "band_noise"], ["band_noise", "chord", "sine"]),
])
def test_natural_order_sorts_numbers_and_number_words_by_value(names, natural):
    assert [names[i] for i in ev.display_order(names)] == natural


# ----------------------------------------------------------------------------------------------
# Figure 3: a title that says which classes are shown, and no class dropped without a word
# ----------------------------------------------------------------------------------------------

def test_projection_title_says_which_classes_and_how_many_of_how_many(tmp_path, synthetic_features, drawn, capsys):
    perfect = write_tree(tmp_path / "perfect", predictions())  # FINETUNE made no test error
    ft, pt = perfect / "digits/tiny/finetune/seed-0", perfect / "digits/tiny/pairtune/seed-0"
    assert ev.main(["projection", "--finetune", str(ft), "--pairtune", str(pt), "--method", "pca",
                    "--out", str(tmp_path / "u.png")]) == 0
    info = json.loads((tmp_path / "u.json").read_text())
    assert info["classes"] == DIGITS  # all ten, none dropped, in natural order
    title = drawn[-1]._suptitle.get_text()
    assert title == info["title"] == ("Test features of all 10 classes (FINETUNE made no test errors: no confusion "
                                      "to rank classes by)")
    assert "hardest" not in title
    assert [t.get_text() for t in drawn[-1].legends[0].get_texts()] == DIGITS
    assert "(10 of 10 classes;" in capsys.readouterr().out

    errors = [("one", "seven"), ("seven", "one"), ("one", "four"), ("two", "three"), ("three", "two"),
              ("two", "zero"), ("five", "nine"), ("nine", "six"), ("six", "five"), ("eight", "eight")]
    confused = write_tree(tmp_path / "confused", predictions(errors))
    ft, pt = confused / "digits/tiny/finetune/seed-0", confused / "digits/tiny/pairtune/seed-0"
    assert ev.main(["projection", "--finetune", str(ft), "--pairtune", str(pt), "--method", "pca",
                    "--out", str(tmp_path / "v.png")]) == 0
    info = json.loads((tmp_path / "v.json").read_text())
    assert sorted(info["classes"]) == sorted(["one", "seven", "four", "two", "three", "zero", "five", "nine", "six"])
    assert drawn[-1]._suptitle.get_text() == "Test features of the 9 classes FINETUNE confuses most on test, of 10"
    assert "(9 of 10 classes;" in capsys.readouterr().out
    assert ev.main(["projection", "--finetune", str(ft), "--pairtune", str(pt), "--method", "pca",
                    "--classes", "eight,zero", "--out", str(tmp_path / "w.png")]) == 0
    assert drawn[-1]._suptitle.get_text() == "Test features of the 2 classes given (--classes), of 10"


# ----------------------------------------------------------------------------------------------
# Tables: a caption that matches the rows, one file per table
# ----------------------------------------------------------------------------------------------

def caption(markdown):
    """The text under a markdown table."""
    return markdown.rstrip().splitlines()[-1]


def test_each_table_has_its_own_caption_and_its_own_file(tmp_path, synthetic_features, capsys):
    for seed in (0, 1):
        write_run(tmp_path, f"ft/s{seed}", seed=seed, test_acc=0.7 + seed / 10, knn_test_acc=0.6)
        write_run(tmp_path, f"pt/s{seed}", method="pairtune", seed=seed, test_acc=0.75, knn_test_acc=0.8)
    code, linear, _ = run_table(tmp_path, capsys)
    assert code == 0 and "k-NN" not in caption(linear) and "k-NN" not in linear
    plain = (tmp_path / "table.md").read_bytes()
    code, both, err = run_table(tmp_path, capsys, "--probe", "both")
    assert code == 0 and "k-NN rows: the k-NN probe" in caption(both)
    assert (tmp_path / "table-both.md").read_text() == both and "table-both.md" in err
    assert (tmp_path / "table.md").read_bytes() == plain  # the linear table is not overwritten
    assert json.loads((tmp_path / "table-both.json").read_text())["legend"] == caption(both)
    code, knn, _ = run_table(tmp_path, capsys, "--probe", "knn")
    assert code == 0 and caption(knn).startswith("Test accuracy (%) of the k-NN probe")
    assert "k-NN rows" not in caption(knn) and (tmp_path / "table-knn.md").read_text() == knn
    assert (tmp_path / "table.md").read_bytes() == plain and (tmp_path / "table-both.md").read_text() == both
    code, _, _ = run_table(tmp_path, capsys, "--probe", "both", "--out", str(tmp_path / "out"))
    assert code == 0 and sorted(p.name for p in (tmp_path / "out").glob("table*")) == [
        "table-both.csv", "table-both.json", "table-both.md"]
    # the report: the linear table and the table with both probes, each in its own files, captioned as above
    assert ev.main(["report", str(tmp_path), "--out", str(tmp_path / "report"), "--device", "cpu"]) == 0
    assert (tmp_path / "report/table.md").read_text() == linear
    assert (tmp_path / "report/table-both.md").read_text() == both
