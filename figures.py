"""The figures of eval.py's analyses, drawn with matplotlib on the headless Agg backend: the confusion heatmap,
Figure 2 (valid accuracy per epoch), Figure 3 (2-D maps of the hardest classes) and the few-shot curves.

matplotlib is optional: nothing else in the project imports it, and pyplot() raises MissingPackage, saying
how to install it, where it is missing. These functions only draw what eval.py computed: each figure is
rendered in memory, in every format its Style asks for (PNG at its dpi; PDF and SVG as vectors for a paper),
and handed to the command's `outputs` (outputs.add(path, bytes)), which eval.py writes over its own files only.
"""
import io
from collections import namedtuple
from pathlib import Path

import numpy as np

FORMATS = ("png", "pdf", "svg")
# What files a figure becomes: its formats, and the dots per inch of a PNG (vector formats ignore it). 200 dpi:
# a 6.4-inch figure is 1280 px wide, sharp on a page; 100 dpi (matplotlib's) looks blurred in print.
Style = namedtuple("Style", "formats dpi")
DEFAULT_STYLE = Style(("png",), 200)
ARM_COLOURS = {"finetune": "tab:orange", "pairtune": "tab:blue"}  # Figure 2's two arms, in this order


class MissingPackage(RuntimeError):
    """An optional package a figure needs is not installed; the message says how to install it."""


def pyplot():
    """matplotlib.pyplot on the headless Agg backend, or MissingPackage with the install command."""
    try:
        import matplotlib
    except ImportError:
        raise MissingPackage("figures need matplotlib, which is not installed here: pip install matplotlib "
                             "(or pip install -r requirements-test.txt)") from None
    matplotlib.use("Agg")  # files only (PNG, PDF, SVG): no display, works on servers and in CI
    import matplotlib.pyplot as plt
    return plt


def confusion_heatmap(confusion, classes, shown, path, title, outputs, style=DEFAULT_STYLE):
    """Heatmap of where each true class's clips went, for the classes `shown` (indices, in this order: the
    order of its rows and columns), each cell with its number of clips written in it.

    The colours are those numbers. The diagonal (the correct clips) is greyed out, its count still written,
    and the class's accuracy put in its row label, so the colour scale is spent on the errors: 0 to the
    largest error count, or to the largest count of all where there is no error (not a scale of nothing).
    Returns the files added to `outputs` (one per format of `style`)."""
    plt = pyplot()
    c = np.asarray(confusion, dtype=float)
    accuracy = np.diag(c) / np.maximum(c.sum(axis=1), 1)
    sub = c[np.ix_(shown, shown)]
    diagonal = np.eye(len(shown), dtype=bool)
    errors = np.ma.masked_array(sub, mask=diagonal)
    top = float(errors.max()) if errors.count() and errors.max() > 0 else max(float(sub.max()), 1.0)
    colours = plt.get_cmap("Reds").with_extremes(bad="0.85")  # grey for the masked diagonal
    # Cells of about 0.4 inch, smaller for many classes, so that the grid stays within a page's width
    cell = min(0.4, 7.0 / max(len(shown), 1))
    # constrained layout: room for the long row labels, the axis titles and the colour bar (none clipped)
    fig, ax = plt.subplots(figsize=(cell * len(shown) + 2.8, cell * len(shown) + 2.0), layout="constrained")
    # aspect "auto": the figure's size keeps the cells about square, and a fixed aspect makes the constrained
    # layout clip the y label (seen with rotated x labels and a title, matplotlib 3.11)
    image = ax.imshow(errors, cmap=colours, vmin=0, vmax=top, interpolation="nearest", aspect="auto")
    font = 8 if len(shown) <= 20 else 6
    count_font = 8 if len(shown) <= 12 else 6 if len(shown) <= 25 else 4.5
    whole = np.all(sub == np.round(sub))  # counts summed over runs are whole clips; anything else gets a decimal
    for row in range(len(shown)):
        for column in range(len(shown)):
            value = sub[row, column]
            dark = not diagonal[row, column] and value > 0.6 * top  # white text on the darkest reds
            colour = "white" if dark else "black" if value else "0.6"  # the many zeros quieter than the errors
            ax.text(column, row, f"{value:.0f}" if whole else f"{value:.1f}", ha="center", va="center",
                    fontsize=count_font, color=colour)
    ax.set_xticks(range(len(shown)), [classes[i] for i in shown], rotation=90, fontsize=font)
    ax.set_yticks(range(len(shown)), [f"{classes[i]} ({100 * accuracy[i]:.0f}%)" for i in shown], fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (its accuracy)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="clips (errors; diagonal grey)",
                 ticks=plt.MaxNLocator(integer=whole))  # whole clips: no tick at a quarter of a clip
    return save_figure(plt, fig, path, outputs, style)


def save_figure(plt, fig, path, outputs, style=DEFAULT_STYLE):
    """The figure rendered in memory in each format of `style` and added to `outputs` as `path` with that
    format's suffix (fig.png, fig.pdf, ...). Returns those paths."""
    written = []
    # TrueType fonts in PDFs (matplotlib's default, Type 3, is refused by some publishers' checks)
    with plt.rc_context({"pdf.fonttype": 42}):
        for form in style.formats:
            buffer = io.BytesIO()
            fig.savefig(buffer, format=form, dpi=style.dpi)
            written.append(Path(path).with_suffix("." + form))
            outputs.add(written[-1], buffer.getvalue())
    plt.close(fig)
    return written


def class_colours(count):
    """One distinct colour per class (tab10, or tab20 above 10 classes, repeating past 20)."""
    plt = pyplot()
    palette = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [palette(i % palette.N) for i in range(count)]


def plot_projection(panels, class_names, path, title, outputs, style=DEFAULT_STYLE):
    """Side-by-side 2-D scatter plots, one colour per class; panels: [(heading, coords, labels)]."""
    plt = pyplot()
    colours = class_colours(len(class_names))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5.2), squeeze=False)
    for ax, (heading, coords, labels) in zip(axes[0], panels):
        for index, name in enumerate(class_names):
            mine = labels == index
            ax.scatter(coords[mine, 0], coords[mine, 1], s=14, color=colours[index], label=name, alpha=0.85)
        ax.set_title(heading, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(class_names), 5), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * ((len(class_names) - 1) // 5), 1, 0.95))
    return save_figure(plt, fig, path, outputs, style)


def curve_score(entry):
    """What Figure 2's curves measure: "accuracy", or "mAP" where the runs are multi-label (eval.curve_data marks
    such a curve "score": "mAP")."""
    return "mAP" if any(curve.get("score") == "mAP" for curve in entry.values()) else "accuracy"


def plot_curves(entry, path, title, outputs, style=DEFAULT_STYLE):
    """Figure 2: valid accuracy (multi-label runs: valid mAP) per epoch, mean line with a ± std band over runs,
    one line per arm."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for arm, colour in ARM_COLOURS.items():
        if arm not in entry:
            continue
        curve = entry[arm]
        epochs, mean = np.array(curve["epochs"]), np.array(curve["mean"])
        std = np.array([s if s is not None else 0.0 for s in curve["std"]])
        ax.plot(epochs, mean, marker="o", markersize=3, color=colour,
                label=f"{arm.upper()} ({curve['metric']}; n={max(curve['n'])})")
        ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
    return save_line_figure(plt, fig, ax, path, "epoch", f"valid {curve_score(entry)} (%)", title, outputs, style)


def save_line_figure(plt, fig, ax, path, xlabel, ylabel, title, outputs, style):
    """The labels, grid and legend of Figure 2 and the few-shot curves, then the files (save_figure)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(plt, fig, path, outputs, style)


def plot_shot_curves(series, path, title, outputs, style=DEFAULT_STYLE):
    """Accuracy against shots per class (log x), a mean line and a ± std band per series."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colours = {"FINETUNE": "tab:orange", "PAIRTUNE": "tab:blue", "FROZEN": "tab:gray"}
    for label, points in series.items():
        shots = np.array(sorted(points))
        mean = np.array([points[k]["mean"] for k in shots])
        std = np.array([points[k]["std"] or 0.0 for k in shots])
        colour = colours[label.split()[0]]
        dashes = "--" if "k-NN" in label else "-"
        ax.plot(shots, mean, dashes, marker="o", markersize=3, color=colour,
                label=f"{label} (n={max(points[k]['n'] for k in shots)})")
        ax.fill_between(shots, mean - std, mean + std, color=colour, alpha=0.12, linewidth=0)
    ax.set_xscale("log", base=2)
    all_shots = sorted({k for points in series.values() for k in points})
    ax.set_xticks(all_shots, [str(k) for k in all_shots])
    return save_line_figure(plt, fig, ax, path, "train clips per class (K)", "test accuracy (%)", title, outputs,
                            style)
