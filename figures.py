"""The figures of eval.py's analyses, drawn with matplotlib on the headless Agg backend: the confusion heatmap,
Figure 2 (valid accuracy per epoch), Figure 3 (2-D maps of the hardest classes) and the few-shot curves.

matplotlib is optional: nothing else in the project imports it, and pyplot() raises MissingPackage, saying
how to install it, where it is missing. These functions only draw what eval.py computed: each PNG is
rendered in memory and handed to the command's `outputs` (outputs.add(path, png bytes)), which eval.py
writes over its own files only.
"""
import io
from pathlib import Path

import numpy as np

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
    matplotlib.use("Agg")  # PNG files only: no display, works on servers and in CI
    import matplotlib.pyplot as plt
    return plt


def confusion_heatmap(confusion, classes, shown, path, title, outputs):
    """Heatmap of where each true class's clips went, as fractions of that class, for the classes `shown`
    (indices, in this order).

    The diagonal (the correct share) is greyed out and its accuracy put in the row label, so the
    colour scale is spent on the errors."""
    plt = pyplot()
    c = np.asarray(confusion, dtype=float)
    fractions = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
    accuracy = np.diag(fractions)
    sub = fractions[np.ix_(shown, shown)]
    errors = np.ma.masked_array(sub, mask=np.eye(len(shown), dtype=bool))
    top = max(float(errors.max()) if errors.count() else 0.0, 1e-9)
    colours = plt.get_cmap("Reds").with_extremes(bad="0.85")  # grey for the masked diagonal
    side = min(max(4.0, 0.22 * len(shown) + 3.0), 16.0)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(errors, cmap=colours, vmin=0, vmax=top, interpolation="nearest")
    font = 8 if len(shown) <= 20 else 6
    ax.set_xticks(range(len(shown)), [classes[i] for i in shown], rotation=90, fontsize=font)
    ax.set_yticks(range(len(shown)), [f"{classes[i]} ({100 * accuracy[i]:.0f}%)" for i in shown], fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (its accuracy)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class (errors; diagonal grey)")
    fig.tight_layout()
    save_figure(plt, fig, path, outputs)


def save_figure(plt, fig, path, outputs):
    """The figure rendered in memory (its format from the path's suffix, as savefig would choose), added to
    `outputs` as the file `path`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".").lower() or "png", dpi=100)
    plt.close(fig)
    outputs.add(path, buffer.getvalue())


def class_colours(count):
    """One distinct colour per class (tab10, or tab20 above 10 classes, repeating past 20)."""
    plt = pyplot()
    palette = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [palette(i % palette.N) for i in range(count)]


def plot_projection(panels, class_names, path, title, outputs):
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
    save_figure(plt, fig, path, outputs)


def plot_curves(entry, path, title, outputs):
    """Figure 2: valid accuracy per epoch, mean line with a ± std band over runs, one line per arm."""
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
    save_line_figure(plt, fig, ax, path, "epoch", "valid accuracy (%)", title, outputs)


def save_line_figure(plt, fig, ax, path, xlabel, ylabel, title, outputs):
    """The labels, grid and legend of Figure 2 and the few-shot curves, then the PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(plt, fig, path, outputs)


def plot_shot_curves(series, path, title, outputs):
    """Accuracy against shots per class (log x), a mean line and a ± std band per series."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colours = {"FINETUNE": "tab:orange", "PAIRTUNE": "tab:blue", "FROZEN": "tab:gray"}
    for label, points in series.items():
        shots = np.array(sorted(points))
        mean = np.array([points[k]["mean"] for k in shots])
        std = np.array([points[k]["std"] or 0.0 for k in shots])
        colour = colours[label.split()[0]]
        style = "--" if "k-NN" in label else "-"
        ax.plot(shots, mean, style, marker="o", markersize=3, color=colour,
                label=f"{label} (n={max(points[k]['n'] for k in shots)})")
        ax.fill_between(shots, mean - std, mean + std, color=colour, alpha=0.12, linewidth=0)
    ax.set_xscale("log", base=2)
    all_shots = sorted({k for points in series.values() for k in points})
    ax.set_xticks(all_shots, [str(k) for k in all_shots])
    save_line_figure(plt, fig, ax, path, "train clips per class (K)", "test accuracy (%)", title, outputs)
