"""The paper's analysis of finished runs (sections 3.3-3.4): Table 2, Table 3, confusion, Figures 2 and 3.

Each run is a folder that rundir.py reads (its layout, its record, its results and its log: rundir.find_runs
is the one place that finds runs). This script turns them into the paper's section 3.3-3.4: the results
table (mean ± sample std over seeds or ESC-50 folds: tables.py), anisotropy and dimensionality
contribution of test features (Table 3), confusion analysis, a 2-D map of the hardest classes (Figure 3)
and convergence curves (Figure 2), drawn by figures.py. run_all.sh's questions about its grid (which
runs are done, the batch-size search's choice, the device-hours left) are grid.py's.

Multi-label runs (results.json "multilabel": true) are scored by macro mAP: Table 2 shows their test mAP
(the dataset's column marked "(mAP)", the caption saying so) and Figure 2 their valid mAP; a clip has no
one predicted class, so `confusion` gives each class's test AP instead (lowest first), and Figure 3's
hardest classes are the lowest-AP ones. Table 3 and anisotropy need only the features, as for any run.

Examples::

    # Table 2: print it and write runs/table.md, runs/table.csv, runs/table.json
    python eval.py table runs/
    python eval.py table runs/ --out reports/
    python eval.py table runs/ --probe both    # the k-NN probe's row under each method's (or --probe knn)

    # everything below for a whole runs tree, into runs/report/ with a report.md (run_all.sh's end)
    python eval.py report runs/

    # anisotropy and dimensionality contribution (Table 3) of test features
    python eval.py isotropy --features finetune.npy pairtune.npy
    python eval.py dimcontrib --ckpt runs/esc50/wav2vec2/finetune/fold-1 runs/esc50/wav2vec2/pairtune/fold-1
    python eval.py dimcontrib --runs runs/ --json table3.json

    # which classes a run confuses (several runs: summed), as text and a heatmap with the counts in its cells
    python eval.py confusion runs/esc50/wav2vec2/finetune/fold-* --out reports/esc50-finetune
    python eval.py confusion runs/fsdd-digit/tiny/finetune/seed-0 --format pdf,svg --class-order zero,one,two
    python eval.py confusion runs/fsd50k/wav2vec2/finetune/seed-0   # multi-label: per-class AP, lowest first

    # every figure as PNG at --dpi (default 200), or as vectors for a paper: --format png,pdf,svg
    python eval.py report runs/ --format pdf,png --dpi 300

    # Figure 3 (UMAP, else t-SNE, else PCA: --method) and Figure 2
    python eval.py projection --out fig3.png --finetune runs/esc50/wav2vec2/finetune/fold-1 \\
                              --pairtune runs/esc50/wav2vec2/pairtune/fold-1
    python eval.py curves runs/ --out figures/
    python eval.py curves runs/ --shots --out figures/   # few-shot runs: accuracy against K clips a class

``table`` and ``confusion``'s text need only the standard library and numpy, so they run wherever
the results were copied to. Test features come from the runs' feature caches (finetune.py and
probe.py write them), else they are encoded with the run's encoder, which imports torch. Figures
need matplotlib, and Figure 3 umap-learn (without it: t-SNE if scikit-learn is there, else PCA, and
the figure says which); nothing else in the project imports them. Each subcommand is a
``cmd_<name>(args) -> exit code`` function registered in ``build_parser``. Every file they write replaces
only one that eval.py wrote and nobody changed since (outdir.write_owned); otherwise the command writes
none of its files and exits 1 with ``error: ...``.
"""

import argparse
import csv
import io
import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np

import figures
import outdir
import rundir
import tables
from rundir import print_warning
from tables import ARMS, MISSING_CELL, none_first

# ----------------------------------------------------------------------------------------------
# Writing: only over eval.py's own files
# ----------------------------------------------------------------------------------------------

# Reports and tables land beside the user's files (RUNS/report/, RUNS/table.md, --out): a file there that
# eval.py did not write, or that was edited since, is never replaced (outdir.write_owned), and a command
# stops with `error: ...` (main) instead.
SCRIPT = "eval.py"


class Outputs:
    """The files of one command, held in memory until `write`, which checks every one before writing the
    first: a refusal leaves none of them written, not half a report."""

    def __init__(self):
        self.files = {}

    def add(self, path, content):
        self.files[Path(path)] = content

    def check(self, paths=None):
        for path in self.files if paths is None else paths:
            outdir.check_owned(path, SCRIPT)

    def write(self):
        self.check()
        for path, content in self.files.items():
            outdir.write_owned(path, content, SCRIPT)


def save(path, content, outputs=None):
    """`content` (str or bytes) into `path`: added to `outputs`, or written now where none is given."""
    if outputs is None:
        outdir.write_owned(path, content, SCRIPT)
    else:
        outputs.add(path, content)


# ----------------------------------------------------------------------------------------------
# Geometry of the representations (paper, section 3.4): anisotropy and the
# dimensionality contribution to cosine similarity
# ----------------------------------------------------------------------------------------------


def unit_rows(features):
    """[N, d] float64 rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"expected a [N, d] matrix with N >= 2 clips, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def cosine_contributions(features):
    """CC_i: the mean over pairs of distinct clips (n != m) of u_ni * u_mi, for each dimension i.

    In O(N d): sum over n != m of u_ni u_mi = (sum_n u_ni)^2 - sum_n u_ni^2, divided by N (N - 1)
    pairs. Their sum over i is the mean cosine similarity (the anisotropy).
    """
    u = unit_rows(features)
    n = u.shape[0]
    return (u.sum(axis=0) ** 2 - (u ** 2).sum(axis=0)) / (n * (n - 1))


def anisotropy(features):
    """Mean cosine similarity over all pairs of distinct clips (0 for an isotropic cloud)."""
    return float(cosine_contributions(features).sum())


def dimension_contribution(features):
    """How few dimensions carry the cosine similarity (Timkey & van Schijndel 2021).

    Dimensions are ranked by |CC_i| and given shares |CC_i| / sum_j |CC_j|: the summed share of the
    top 1, 2 and 3 dimensions, and how many dimensions reach 50, 80 and 90%. Shares of |CC| are used
    because the signed shares CC_i / sum_j CC_j blow up when the mean cosine is near zero (after
    fine-tuning, it can be); the signed shares of the same top dimensions are reported too.
    """
    cc = cosine_contributions(features)
    order = np.argsort(-np.abs(cc), kind="stable")
    total_abs = np.abs(cc).sum()
    shares = np.abs(cc[order]) / total_abs if total_abs > 0 else np.zeros(len(cc))
    cumulative = np.cumsum(shares)
    dims_for = lambda q: int(np.searchsorted(cumulative, q - 1e-12) + 1)  # first rank whose total >= q
    total = cc.sum()
    signed = cc[order[:3]] / total if total != 0 else None  # undefined for a zero mean cosine
    share = lambda rank: float(cumulative[min(rank, len(cc) - 1)]) if total_abs > 0 else None
    return {
        "anisotropy": float(total),
        "top1": share(0), "top2": share(1), "top3": share(2),
        # all CC_i zero (e.g. orthogonal features): no number of dimensions reaches any share
        "dims50": dims_for(0.5) if total_abs > 0 else None, "dims80": dims_for(0.8) if total_abs > 0 else None,
        "dims90": dims_for(0.9) if total_abs > 0 else None,
        "top_dimensions": [int(i) for i in order[:3]],
        "signed_top1": None if signed is None else float(signed[0]),
        "signed_top3": None if signed is None else float(np.sum(signed[:3])),
        "dimensions": int(len(cc)),
    }


# ----------------------------------------------------------------------------------------------
# Training runs: grouping and test features (their logs: rundir.py)
# ----------------------------------------------------------------------------------------------

def group_runs(runs):
    """{(dataset, backbone): {"finetune": [runs], "pairtune": [runs]}}, runs ordered by fold, then seed."""
    groups = {}
    for run in sorted(runs, key=lambda r: (str(r["dataset"]), r["backbone"], none_first(r["fold"]),
                                           none_first(r["seed"]), str(r["dir"]))):  # str: a run record may lack one
        groups.setdefault((run["dataset"], run["backbone"]), {arm: [] for arm in ARMS})[run["method"]].append(run)
    return dict(sorted(groups.items(), key=lambda item: tuple(map(str, item[0]))))


def repeat_name(run):
    """How runs of one group are told apart: 'seed-0', or 'fold-3' for fold datasets (whose runs use
    seed 0, as run_all.sh does; another seed is added: 'fold-3-seed-1')."""
    if run["fold"] is None:
        return f"seed-{run['seed']}"
    return f"fold-{run['fold']}" + ("" if run["seed"] in (None, 0) else f"-seed-{run['seed']}")


def run_test_features(run_dir, device="auto", data_root=None):
    """(features [N, d] float64, labels, classes) of a finished run's test split, as encoded by the run's
    encoder/ (its best-valid epoch) through backbone.extract_features. labels: class indices [N] (int64), or
    for multi-label data (data.is_multilabel) multi-hot targets [N, C] (float32).

    finetune.py and probe.py cache these in RUN/features/<dataset>[-fold<k>]/test.pt. The cache is
    used when it was made by these very weights (SHA-1 fingerprint), for the run's classes, chunk
    length and number of test clips; otherwise the test split is encoded now and cached there. The
    clips come from the run's manifest, or, where that has moved, from data_root/<dataset>/
    (default $CONFIT_DATA or data/). This path imports torch.
    """
    import backbone  # the training stack: only the feature path needs it
    import data
    import runs
    import transformers

    transformers.utils.logging.disable_progress_bar()  # one bar per loaded encoder would flood a report
    run_dir = Path(run_dir)
    run = rundir.read_run_json(run_dir)
    if run.get("stage") not in ARMS or not run.get("finished") or not (run_dir / rundir.ENCODER).is_dir():
        raise ValueError(f"{run_dir}: not a finished finetune.py or pairtune.py run (no final encoder/)")
    args = run["args"]
    encoder = backbone.load_encoder(str(run_dir / rundir.ENCODER))
    max_seconds = encoder.chunk_seconds(args["max_seconds"])  # as probe.py and finetune.py chunk
    cache_dir = rundir.feature_dir(run_dir, run["dataset"], args.get("fold"))
    saved = runs.load_cache(cache_dir / "test.pt")
    if runs.cache_serves(saved, run["classes"], max_seconds, runs.weights_fingerprint(encoder),
                         n_clips=run["clips"]["test"]):  # the data may have moved: paths not compared
        return saved["features"].double().numpy(), saved["labels"].numpy(), run["classes"]
    manifest = Path(run["manifest"])
    if not manifest.is_file():
        manifest = data.resolve_dataset(run["dataset"], data_root)
    splits, classes = data.load_splits(str(manifest), None, args.get("fold"), args.get("skip_bad", False))
    device = runs.resolve_device(device)
    features, labels = runs.cached_features(encoder.to(device), splits, classes, cache_dir, max_seconds,
                                            device, ("test",), multilabel=data.is_multilabel(splits))["test"]
    return features.double().numpy(), labels.numpy(), classes


def load_features(spec, device="auto", data_root=None):
    """A [N, d] array from a .npy file, or a run folder's test features (run_test_features)."""
    path = Path(spec)
    if path.suffix == ".npy":
        return np.load(path)
    return run_test_features(path, device, data_root)[0]


# ----------------------------------------------------------------------------------------------
# Table 3 over a runs tree: the geometry of FINETUNE vs PAIRTUNE test features (tables.py formats it)
# ----------------------------------------------------------------------------------------------

def geometry_of_runs(groups, device="auto", data_root=None, warn=print_warning):
    """{(dataset, backbone): {arm: [(repeat, dimension_contribution row), ...]}} for every run."""
    from tqdm.auto import tqdm  # a runs tree of the paper's grid holds 180 runs

    table = {}
    progress = tqdm(total=sum(len(runs) for arms in groups.values() for runs in arms.values()),
                    desc="test features", disable=None)
    for key, arms in groups.items():
        table[key] = {}
        for arm, runs in arms.items():
            rows = []
            for run in runs:
                progress.update()
                try:
                    features = run_test_features(run["dir"], device, data_root)[0]
                    rows.append((repeat_name(run), dimension_contribution(features)))
                except Exception as error:  # one unreadable run must not sink a day's report
                    warn(f"no test features for {run['dir']}: {error}")
            table[key][arm] = rows
    progress.close()
    return table


# ----------------------------------------------------------------------------------------------
# Confusion: which classes FINETUNE (or PAIRTUNE) mixes up
# ----------------------------------------------------------------------------------------------


def pair_confusion(confusion):
    """[K, K] symmetric matrix: clips of a predicted as b plus clips of b predicted as a (0 diagonal)."""
    c = np.asarray(confusion, dtype=float)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {c.shape}")
    off = c - np.diag(np.diag(c))
    return off + off.T


def confused_pairs(confusion, top=10):
    """The `top` class pairs with the most confusion (both directions), as (mass, a, b), a < b.
    Pairs without any confusion are left out; ties go to the lower class indices."""
    pairs = pair_confusion(confusion)
    a, b = np.triu_indices(len(pairs), k=1)
    mass = pairs[a, b]
    order = np.lexsort((b, a, -mass))[:top]
    return [(float(mass[k]), int(a[k]), int(b[k])) for k in order if mass[k] > 0]


def confused_triplets(confusion, top=10, exclude=()):
    """The `top` class triplets with the most confusion among their members, as (mass, a, b, c),
    a < b < c: mass is the sum of their three pair masses (all six off-diagonal cells).

    A triplet counts only when at least two of its three pairs are confused, so that its classes are
    linked by confusion: otherwise it is one confused pair plus an arbitrary class. Classes in
    `exclude` take no part; ties go to lower indices. Exact: every triplet is scored, one first class
    at a time, keeping only those that beat the running `top`-th best (about a second for K = 630).
    """
    pairs = pair_confusion(confusion)
    if top < 1:
        return []
    confused = (pairs > 0).astype(np.int8)
    if len(exclude):
        pairs[list(exclude), :] = -np.inf  # any triplet with an excluded member scores -inf
        pairs[:, list(exclude)] = -np.inf
    found = []  # best first, at most `top`
    for a in range(len(pairs) - 2):
        rest = pairs[a, a + 1:]
        b, c = np.triu_indices(len(rest), k=1)  # every b < c after a, as offsets from a + 1
        mass = rest[b] + rest[c] + pairs[a + 1 + b, a + 1 + c]
        links = confused[a, a + 1 + b] + confused[a, a + 1 + c] + confused[a + 1 + b, a + 1 + c]
        # A later first class loses every tie, so it must strictly beat the current top-th triplet.
        bar = found[-1][0] if len(found) == top else 0.0
        keep = np.flatnonzero((mass > bar) & (links >= 2))
        if keep.size == 0:
            continue
        keep = keep[np.lexsort((c[keep], b[keep], -mass[keep]))][:top]
        found += [(float(mass[i]), a, a + 1 + int(b[i]), a + 1 + int(c[i])) for i in keep]
        found = sorted(found, key=lambda t: (-t[0], t[1], t[2], t[3]))[:top]
    return found


def hardest_classes(confusion, triplets=3):
    """Class indices of the `triplets` most confused disjoint triplets, picked greedily (the paper's
    Figure 3 shows three such triplets of FINETUNE). Where no linked triplet is left among the unused
    classes, the most confused pair of them is taken instead. With at most 3 * triplets classes: all."""
    k = len(np.asarray(confusion))
    if k <= 3 * triplets:
        return list(range(k))
    chosen = []
    for _ in range(triplets):
        best = confused_triplets(confusion, top=1, exclude=chosen)
        if not best:
            unused = [p for p in confused_pairs(confusion, top=k * k) if p[1] not in chosen and p[2] not in chosen]
            best = unused[:1]
        if not best:
            break
        chosen.extend(best[0][1:])
    return chosen


def describe_confusion(confusion, classes, top=5, pairs=None, triplets=None):
    """Text: accuracy, the most confused pairs and triplets with their share of all errors (pass
    `pairs`/`triplets` when they are computed already)."""
    c = np.asarray(confusion, dtype=float)
    pairs = confused_pairs(c, top) if pairs is None else pairs
    triplets = confused_triplets(c, top) if triplets is None else triplets
    errors = c.sum() - np.trace(c)
    lines = [f"{int(c.sum())} test clips, {int(errors)} errors, accuracy {100 * np.trace(c) / max(c.sum(), 1):.2f}%"]
    share = lambda mass: f"{100 * mass / errors:.1f}% of errors" if errors else ""
    lines.append("most confused pairs (clips of one predicted as the other, both ways):")
    for mass, a, b in pairs:
        lines.append(f"  {classes[a]} / {classes[b]}: {int(mass)} ({share(mass)})")
    if not pairs:
        lines.append("  (none)")
    lines.append("most confused triplets (all six off-diagonal cells; at least two pairs confused):")
    for mass, a, b, d in triplets:
        lines.append(f"  {classes[a]} / {classes[b]} / {classes[d]}: {int(mass)} ({share(mass)})")
    if not triplets:
        lines.append("  (none)")
    return "\n".join(lines)


def summed_confusion(results_list):
    """One confusion matrix over several runs of one arm (seeds: each test clip counted per seed;
    folds: every clip once). All runs must have the same classes."""
    classes = results_list[0]["classes"]
    total = np.zeros((len(classes), len(classes)))
    for results in results_list:
        if results["classes"] != classes:
            raise ValueError("runs with different class lists cannot be summed")
        total += np.asarray(results["confusion"], dtype=float)
    return total, classes


# ----------------------------------------------------------------------------------------------
# Multi-label runs: a clip carries several classes, so there is no confusion matrix (no one predicted class
# per clip); the per-class test AP (results.json's test_per_class_ap) takes its place
# ----------------------------------------------------------------------------------------------

MULTILABEL_NOTE = ("multi-label run(s): a clip carries several classes, so there is no confusion matrix; "
                   "instead each class's test average precision (results.json test_per_class_ap), lowest first")


def is_multilabel_result(results) -> bool:
    """A results.json of a run on multi-label data ("multilabel": true, scored by mAP)."""
    return results.get("multilabel") is True


def class_ap_rows(results_list):
    """The per-class AP table of one arm's runs: one row per class, {"class", "ap" (the mean over the runs
    of the class's test AP, a fraction; None where no run has a positive test clip of it, so no AP), "runs"
    (how many runs gave it an AP), "positives" (its positive test clips summed over the runs, from
    results.json's test_positives; None where a run does not record them)}. Lowest AP first (ties in class
    order), classes without an AP last. All runs must have the same classes."""
    first = results_list[0]
    if "test_per_class_ap" not in first:
        raise ValueError("a multi-label results.json without test_per_class_ap: no per-class AP to show")
    classes = first.get("classes") or list(first["test_per_class_ap"])
    values, positives = {c: [] for c in classes}, {c: 0 for c in classes}
    counted = all(isinstance(r.get("test_positives"), dict) for r in results_list)
    for results in results_list:
        per_class = results.get("test_per_class_ap")
        if not isinstance(per_class, dict) or list(per_class) != classes:
            raise ValueError("runs with different class lists (or without test_per_class_ap) cannot be summed")
        for c, ap in per_class.items():
            if ap is None:
                continue
            if isinstance(ap, bool) or not isinstance(ap, (int, float)) or not 0.0 <= ap <= 1.0:
                raise ValueError(f"test_per_class_ap of {c!r} must be a fraction in [0, 1] or null, got {ap!r}")
            values[c].append(float(ap))
        if counted:
            for c in classes:
                positives[c] += int(results["test_positives"].get(c, 0))
    rows = [{"class": c, "ap": float(np.mean(values[c])) if values[c] else None, "runs": len(values[c]),
             "positives": positives[c] if counted else None} for c in classes]
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["ap"] is None, rows[i]["ap"] or 0.0, i))
    return [rows[i] for i in order]


def describe_class_ap(rows, n_runs):
    """The per-class AP table as markdown (AP in %, as Table 2), then a line with the macro mean of the column
    and the classes that have no AP."""
    counted = all(row["positives"] is not None for row in rows)
    header = ["class", "AP (%)" if n_runs == 1 else f"AP (%), mean of {n_runs} runs"]
    header += ["test positives" if n_runs == 1 else f"test positives, summed over {n_runs} runs"] if counted else []
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row in rows:
        cells = [row["class"].replace("|", "\\|"), MISSING_CELL if row["ap"] is None else f"{100 * row['ap']:.2f}"]
        lines.append("| " + " | ".join(cells + ([str(row["positives"])] if counted else [])) + " |")
    scored = [row["ap"] for row in rows if row["ap"] is not None]
    none = [row["class"] for row in rows if row["ap"] is None]
    lines += ["", (f"macro mean of the column: {100 * np.mean(scored):.2f}% over {len(scored)} classes"
                   if scored else "no class has a positive test clip")
              + (f"; no AP (no positive test clip): {', '.join(none)}" if none else "")
              + ("" if counted else "; test positives: not recorded in results.json (test_positives)")]
    return "\n".join(lines)


def lowest_ap_classes(rows, count):
    """The `count` classes of lowest AP in class_ap_rows' rows (classes without an AP are never picked):
    Figure 3's hardest classes of a multi-label run."""
    return [row["class"] for row in rows if row["ap"] is not None][:count]


# ----------------------------------------------------------------------------------------------
# The order classes are shown in: runs number them alphabetically (data.load_splits), which puts FSDD's
# "eight" before "five"; a figure shows them in their natural order, or the user's (--class-order)
# ----------------------------------------------------------------------------------------------

NUMBER_WORDS = {word: value for value, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
NUMBER_WORDS.update({word: 10 * tens for tens, word in enumerate("thirty forty fifty sixty seventy eighty ninety"
                                                                 .split(), start=3)})


def natural_key(name):
    """Sort key of a class name in natural order: the numbers in it by value ('2' < '10', 'take2' < 'take10'),
    a name that is an English number word by that number ('zero' < 'one' < ... < 'ninety'), the rest of the
    text alphabetically, ignoring case."""
    word = name.strip().lower()
    if word in NUMBER_WORDS:
        return ((0, NUMBER_WORDS[word]),)
    return tuple((0, int(part)) if part.isdigit() else (1, part)
                 for part in re.split(r"(\d+)", word) if part)


def read_class_order(text):
    """--class-order: a comma-separated list of class names, or a file holding them (one a line, or
    comma-separated). None: the natural order."""
    if text is None:
        return None
    path = Path(text)
    if path.is_file():
        text = path.read_text(encoding="utf-8").replace("\n", ",")
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"--class-order {text!r} names no class")
    return names


def display_order(classes, given=None, strict=True):
    """Indices of `classes` in the order to show them: the names in `given` first, in its order, then the
    others in natural order (natural_key). A name in `given` that is not a class is an error where `strict`
    (one run's figure), and skipped otherwise (a report of several datasets, each with its own classes)."""
    if given:
        unknown = [name for name in given if name not in classes]
        if unknown and strict:
            raise ValueError(f"--class-order: unknown class(es) {', '.join(unknown)}; "
                             f"the classes are: {', '.join(classes)}")
        first = [classes.index(name) for name in dict.fromkeys(given) if name in classes]
    else:
        first = []
    rest = sorted((i for i in range(len(classes)) if i not in first), key=lambda i: natural_key(classes[i]))
    return first + rest


# ----------------------------------------------------------------------------------------------
# Figures: what they show (figures.py draws them; matplotlib and umap-learn are optional)
# ----------------------------------------------------------------------------------------------


def plot_confusion(confusion, classes, path, title, max_classes=40, outputs=None, order=None,
                   style=figures.DEFAULT_STYLE):
    """The confusion heatmap (figures.confusion_heatmap) of every class or, above `max_classes` classes (TIMIT
    has 630), only of the classes of the most confused pairs, with their names, the title saying so. Classes
    are shown in `order` (indices; default: display_order). Returns the files written (or added to `outputs`)."""
    order = display_order(classes) if order is None else order
    shown = list(order)
    if len(classes) > max_classes:
        picked = []
        for _, a, b in confused_pairs(confusion, top=len(classes) ** 2):
            picked += [i for i in (a, b) if i not in picked]
            if len(picked) >= max_classes:
                break
        picked = set(picked[:max_classes])
        shown = [i for i in order if i in picked] or list(order[:max_classes])
        title += f"\n{len(shown)} of {len(classes)} classes: those of the most confused pairs"
    pending = Outputs() if outputs is None else outputs
    written = figures.confusion_heatmap(confusion, classes, shown, path, title, pending, style)
    if outputs is None:
        pending.write()
    return written


def project_2d(features, method="auto", seed=0):
    """2-D coordinates of L2-normalised features and the name of the projection used.

    method: umap (umap-learn), tsne (scikit-learn), pca (numpy), or auto: the first of these that is
    installed and has enough points. The name says when and why a fallback was used, so a figure is
    never taken for UMAP wrongly.
    """
    u = unit_rows(features)
    n = len(u)
    reasons = []  # why auto did not use the method before
    if method in ("auto", "umap"):
        try:
            import umap
        except ImportError:
            if method == "umap":
                raise figures.MissingPackage("--method umap needs umap-learn: pip install umap-learn") from None
            reasons.append("umap-learn not installed")
        else:
            if n >= 10:  # UMAP's neighbour graph needs some points
                reducer = umap.UMAP(n_neighbors=min(15, n - 1), random_state=seed,
                                    init="random" if n < 30 else "spectral")  # spectral init fails on few points
                with warnings.catch_warnings():  # a fixed seed makes UMAP single-threaded, and it says so
                    warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
                    return np.asarray(reducer.fit_transform(u), dtype=float), "UMAP"
            reasons.append(f"{n} points are too few for UMAP")
    if method in ("auto", "tsne"):
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            if method == "tsne":
                raise figures.MissingPackage("--method tsne needs scikit-learn: pip install scikit-learn") from None
            reasons.append("scikit-learn not installed")
        else:
            if n >= 5:
                tsne = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed)
                label = "t-SNE" + (f" ({'; '.join(reasons)})" if reasons else "")
                return np.asarray(tsne.fit_transform(u), dtype=float), label
            reasons.append(f"{n} points are too few for t-SNE")
    centred = u - u.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2] * np.sign(vt[:2, [0]] + (vt[:2, [0]] == 0))  # fix each axis's sign: reproducible
    coords = centred @ axes.T
    if coords.shape[1] < 2:
        coords = np.hstack([coords, np.zeros((n, 2 - coords.shape[1]))])
    return coords, "PCA" + (f" ({'; '.join(reasons)})" if reasons else "")


MAX_PROJECTED = 20  # classes in one Figure 3 where there is no confusion to pick them by: tab20's distinct colours


def projection_figure(finetune_dir, pairtune_dir, path, classes=None, triplets=3, method="auto", device="auto",
                      confusion=None, data_root=None, *, outputs, order=None, style=figures.DEFAULT_STYLE,
                      class_ap=None):
    """Figure 3: the test features of the hardest classes, FINETUNE and PAIRTUNE side by side.

    The classes come from `classes` (names), else from the FINETUNE confusion (`confusion`, or the
    finetune run's own): its `triplets` most confused disjoint triplets. Where FINETUNE made no test error
    there is nothing to rank by: all classes are shown, or the first MAX_PROJECTED of them in `order` (names,
    as --class-order; default: natural order). The title says which of these it is and how many of how many
    classes are shown. Each arm is projected on its own. Returns what was drawn (also added to `outputs`
    next to the figure, as JSON), with the files written.

    Multi-label runs have no confusion: the hardest classes are FINETUNE's 3 * `triplets` classes of lowest
    test AP (`class_ap`: class_ap_rows of its runs, else its run's own results.json), and a point needs one
    colour, so only the clips carrying exactly one of the classes shown are drawn; the title and the JSON
    say how many clips carrying several of them were left out."""
    setups = [rundir.read_run_json(d) for d in (finetune_dir, pairtune_dir) if (Path(d) / rundir.RUN_JSON).is_file()]
    if len(setups) == 2 and ({s["dataset"] for s in setups} != {setups[0]["dataset"]}
                             or {s["args"].get("fold") for s in setups} != {setups[0]["args"].get("fold")}):
        raise ValueError(f"{finetune_dir} and {pairtune_dir} were tested on different data (dataset or fold)")
    arms = {}
    for arm, run_dir in (("finetune", finetune_dir), ("pairtune", pairtune_dir)):
        arms[arm] = run_test_features(run_dir, device, data_root)
    names = arms["finetune"][2]
    if arms["pairtune"][2] != names:
        raise ValueError(f"{finetune_dir} and {pairtune_dir} have different classes")
    multilabel = np.ndim(arms["finetune"][1]) == 2  # multi-hot [N, C] test targets
    if np.ndim(arms["pairtune"][1]) != np.ndim(arms["finetune"][1]):
        raise ValueError(f"one of {finetune_dir} and {pairtune_dir} was tested as multi-label, the other not")
    total = len(names)
    if classes:
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise ValueError(f"unknown class(es) {', '.join(unknown)}; the classes are: {', '.join(names)}")
        chosen = [names.index(c) for c in classes]
        source = "--classes"
        what = f"the {len(chosen)} classes given (--classes), of {total}"
    elif multilabel:  # no confusion: rank the classes by FINETUNE's test AP instead
        rows = class_ap_rows([rundir.run_results(finetune_dir)]) if class_ap is None else class_ap
        if total <= 3 * triplets:
            chosen = display_order(names, order, strict=False)
            source = f"all {total} classes ({triplets} triplets hold up to {3 * triplets})"
            what = f"all {total} classes"
        else:
            chosen = [names.index(c) for c in lowest_ap_classes(rows, 3 * triplets)]
            source = (f"the {len(chosen)} classes of lowest test AP of FINETUNE (multi-label: no confusion to pick "
                      "triplets from)")
            what = f"the {len(chosen)} classes FINETUNE scores worst on test (lowest AP), of {total}"
    else:
        if confusion is None:
            confusion = rundir.run_results(finetune_dir)["confusion"]
        no_errors = not confused_pairs(confusion, top=1)
        chosen = hardest_classes(confusion, triplets)
        if len(chosen) == total:  # as few classes as the triplets hold: all of them, in the order asked for
            chosen = display_order(names, order, strict=False)
            source = f"all {total} classes ({triplets} triplets hold up to {3 * triplets})"
            what = f"all {total} classes"
        elif no_errors:  # FINETUNE made no errors: no class is harder than another
            chosen = display_order(names, order, strict=False)[:MAX_PROJECTED]
            source = (f"{'all' if len(chosen) == total else f'the first {len(chosen)} of'} {total} classes "
                      "(FINETUNE made no test errors: no confusion to rank classes by)")
            what = source
        else:
            source = f"the {triplets} most confused disjoint triplets (or pairs) of FINETUNE's test confusion"
            what = f"the {len(chosen)} classes FINETUNE confuses most on test, of {total}"
    panels, drawn, several = [], {}, {}
    run_dirs = {"finetune": finetune_dir, "pairtune": pairtune_dir}
    for arm, (features, labels, _) in arms.items():
        if multilabel:
            carried = np.asarray(labels)[:, chosen] > 0  # [N, shown classes]
            keep = carried.sum(axis=1) == 1  # a clip carrying several shown classes has no one colour
            relabel = carried[keep].argmax(axis=1)
            several[arm] = int((carried.sum(axis=1) > 1).sum())
        else:
            keep = np.isin(labels, chosen)
            relabel = np.array([chosen.index(int(y)) for y in labels[keep]], dtype=int)
        coords, used = project_2d(features[keep], method)
        panels.append((f"{arm.upper()} ({used})", coords, relabel))
        drawn[arm] = {"run": str(run_dirs[arm]), "method": used,
                      "points": [[float(x), float(y), names[chosen[c]]] for (x, y), c in zip(coords, relabel)]}
    chosen_names = [names[i] for i in chosen]
    title = f"Test features of {what}"
    if multilabel:
        # a second line: one would be cut off at the figure's edges
        title += (f"\nmulti-label: the clips carrying exactly one of them ({several['finetune']} carrying several "
                  "left out)")
    files = figures.plot_projection(panels, chosen_names, path, title, outputs, style)
    info = {"classes": chosen_names, "classes_from": source, "shown": f"{len(chosen)} of {total} classes",
            "title": title, **drawn}
    if multilabel:
        info["multilabel"] = {"clips_with_several_shown_classes_left_out": several["finetune"]}
    save(Path(path).with_suffix(".json"), json.dumps(info, indent=2, ensure_ascii=False) + "\n", outputs)
    return {**info, "files": files}


def curve_data(groups, warn=print_warning):
    """Valid accuracy per epoch (percent), per (dataset, backbone) and arm: mean, sample std and n
    over the runs that reached each epoch, plus what the valid metric was."""
    curves = {}
    for key, arms in groups.items():
        entry = {}
        for arm, runs in arms.items():
            per_epoch, first = {}, None  # first: the first run with a curve, and its log lines
            for run in runs:
                try:
                    lines = rundir.read_log_lines(run["dir"], warn, needs=rundir.CURVE_FIELDS)  # read once: one warning
                except (OSError, ValueError) as error:
                    warn(f"skipping the curve of {run['dir']}: {error}")
                    continue
                for epoch, valid_acc in rundir.epoch_accuracies(lines).items():
                    per_epoch.setdefault(epoch, []).append(100.0 * valid_acc)
                if lines and first is None:
                    first = (run, lines)
            if not per_epoch:
                continue
            epochs = sorted(per_epoch)
            values = [np.array(per_epoch[e]) for e in epochs]
            run, lines = first
            name = rundir.valid_metric(lines, "classifier" if arm == "finetune" else
                                (run["run"].get("args") or {}).get("select_by", "centroid"))
            # multi-label runs log macro mAP (valid_map, valid_metric_map) where others log accuracy
            score = "mAP" if any(field in lines[-1] for field in ("valid_map", "valid_metric_map")) else "accuracy"
            metric = (f"its classifier's {score}" if name == "classifier" else
                      f"{name} {score} of encoder features")
            entry[arm] = {"epochs": epochs, "mean": [float(v.mean()) for v in values],
                          "std": [float(v.std(ddof=1)) if len(v) > 1 else None for v in values],
                          "n": [int(len(v)) for v in values], "metric": metric,
                          **({"score": score} if score == "mAP" else {})}  # curves.json as before for accuracy
        if entry:
            curves[key] = entry
    return curves


# ----------------------------------------------------------------------------------------------
# Few-shot learning curves: test accuracy against K train clips per class (--shots K)
# ----------------------------------------------------------------------------------------------

SHOT_SERIES = (  # (method, results.json field, label): the linear and the k-NN probe of each method
    ("finetune", "test_acc", "FINETUNE"), ("finetune", "knn_test_acc", "FINETUNE + k-NN probe"),
    ("pairtune", "test_acc", "PAIRTUNE + linear probe"), ("pairtune", "knn_test_acc", "PAIRTUNE + k-NN probe"),
    ("frozen", "test_acc", "FROZEN + linear probe"), ("frozen", "knn_test_acc", "FROZEN + k-NN probe"))
SHOT_CSV_COLUMNS = ("dataset", "backbone", "series", "shots", "n", "mean_pct", "std_pct", "seeds")


def shot_curves(runs_dir, warn=print_warning):
    """{(dataset, backbone): {series label: {K: tables.cell_stats + seeds}}} of every finished few-shot run
    (finetune.py, or probe.py of a PairTune run or a frozen encoder) below runs_dir, over seeds (or folds)."""
    points = {}
    for found in rundir.find_runs(runs_dir, ("finetune", "probe"), warn, few_shot=True):
        if found["results"] is None:
            continue
        results = json.loads(Path(found["results"]).read_text(encoding="utf-8"))
        for method, field, label in SHOT_SERIES:
            if found["method"] == method and results.get(field) is not None:
                repeat = found["seed"] if found["fold"] is None else f"fold-{found['fold']}"
                series = points.setdefault((found["dataset"], found["backbone"]), {}).setdefault(label, {})
                series.setdefault(int(found["shots"]), []).append((repeat, results[field]))
    curves = {}
    for key in sorted(points, key=lambda key: tuple(map(str, key))):  # a dataset may be None: not in the run record
        curves[key] = {}
        for _, _, label in SHOT_SERIES:  # in SHOT_SERIES order, so figures and files are stable
            if label in points[key]:
                curves[key][label] = {
                    shots: {**tables.cell_stats([acc for _, acc in sorted(runs, key=str)]),
                            "seeds": [repeat for repeat, _ in sorted(runs, key=str)]}
                    for shots, runs in sorted(points[key][label].items())}
    return curves


def write_shot_curves(curves, out: Path, outputs, style=figures.DEFAULT_STYLE) -> list[Path]:
    """shots-<dataset>-<backbone>.png (and/or .pdf, .svg: `style`) per group (without matplotlib: none, with
    a note) and shots.csv, into `outputs`. Returns the figures' files."""
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=SHOT_CSV_COLUMNS)
    writer.writeheader()
    for (dataset, backbone), series in curves.items():
        for label, points in series.items():
            for shots, cell in points.items():
                writer.writerow({"dataset": dataset, "backbone": backbone, "series": label, "shots": shots,
                                 "n": cell["n"], "mean_pct": cell["mean"],
                                 "std_pct": "" if cell["std"] is None else cell["std"],
                                 "seeds": " ".join(map(str, cell["seeds"]))})
    outputs.add(out / "shots.csv", handle.getvalue())
    pictures = []
    try:
        figures.pyplot()
    except figures.MissingPackage as error:
        print(f"note: no few-shot figure: {error}", file=sys.stderr)
        return pictures
    for key, series in curves.items():
        path = out / f"shots-{group_stem(key)}.png"
        pictures += figures.plot_shot_curves(series, path, f"Test accuracy against shots per class: {group_name(key)}",
                                             outputs, style)
    return pictures


def curve_title(entry, name):
    """Figure 2's title: 'Valid accuracy per epoch: esc50 · wav2vec2', or mAP for multi-label runs."""
    return f"Valid {figures.curve_score(entry)} per epoch: {name}"


def group_name(key):
    """'esc50 · wav2vec2': how a (dataset, backbone) group is titled and keyed in JSON files."""
    return f"{key[0]} · {key[1]}"


def group_stem(key):
    """'esc50-wav2vec2': the file-name-safe form, for the group's figures."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{key[0]}-{key[1]}").strip("_")


def by_name(per_group):
    """{(dataset, backbone): x} -> {'dataset · backbone': x}, for JSON."""
    return {group_name(key): value for key, value in per_group.items()}


def figure_style(args):
    """The figures.Style of --format and --dpi (PNG at 200 dpi where not given)."""
    return figures.Style(tuple(args.format or figures.DEFAULT_STYLE.formats), args.dpi)


def figure_link(files, alt):
    """report.md's line for one figure written in one or more formats: the image shown from its PNG or SVG
    (what a markdown viewer displays), the other files linked after it; a PDF alone, as a link."""
    shown = next((path for path in files if path.suffix in (".png", ".svg")), None)
    others = [path for path in files if path != shown]
    line = f"![{alt}]({shown.name})" if shown else ""
    if others:
        line += (" Also as " if shown else f"{alt}: ") + ", ".join(
            f"[{path.suffix.lstrip('.').upper()}]({path.name})" for path in others) + "."
    return line.strip()


# ----------------------------------------------------------------------------------------------
# Subcommands
# ----------------------------------------------------------------------------------------------


def cmd_table(args):
    runs_dir = Path(args.runs_dir)
    if not runs_dir.is_dir():
        print(f"error: runs directory {runs_dir} does not exist or is not a directory", file=sys.stderr)
        return 1
    try:
        md_path, csv_path, json_path = tables.output_paths(runs_dir, args.out, args.probe)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    outputs = Outputs()
    outputs.check([md_path, csv_path, json_path])  # before the table is printed: a refusal prints only why

    results = tables.collect_results(runs_dir)
    if not results:
        print(f"error: no usable results.json files found under {runs_dir}", file=sys.stderr)
        return 1

    summary = tables.summarise_probe(results, args.probe)
    if not summary["backbones"]:
        print(f"error: no run under {runs_dir} has a k-NN probe result (knn_test_acc, or a multi-label run's "
              "knn_test_map)", file=sys.stderr)
        return 1
    table = tables.format_table(summary)
    print(table, end="")

    outputs.add(md_path, table)
    outputs.add(csv_path, tables.table_csv(summary))
    outputs.add(json_path, tables.table_json(summary))
    outputs.write()
    # Status goes to stderr so stdout stays pure markdown for piping.
    print(f"wrote {md_path}, {csv_path}, {json_path} ({len(results)} runs)", file=sys.stderr)
    return 0


def cmd_geometry(args):
    if args.runs:
        return cmd_geometry_runs(args)
    names = list(args.ckpt or []) + list(args.features or [])
    if not names:
        print("error: give --ckpt RUN, --features X.npy (one or more) or --runs RUNS_DIR", file=sys.stderr)
        return 1
    rows = {}
    for name in names:
        try:
            rows[name] = dimension_contribution(load_features(name, args.device, args.data_root))
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    if args.command == "isotropy":
        print("| features | anisotropy (mean cosine) |\n|---|---:|")
        for name, row in rows.items():
            print(f"| {name} | {row['anisotropy']:.4f} |")
    else:
        print("| features | top1 | top2 | top3 | dims50 | dims80 | dims90 | signed top1 | signed top3 |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, r in rows.items():
            shown = lambda x: MISSING_CELL if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)
            print("| " + " | ".join([name] + [shown(r[f]) for f in ("top1", "top2", "top3", "dims50", "dims80",
                                                                      "dims90", "signed_top1", "signed_top3")]) + " |")
    if args.json:
        save(args.json, json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def cmd_geometry_runs(args):
    """Table 3 (and anisotropy) for every (dataset, backbone) of a runs tree, FINETUNE vs PAIRTUNE."""
    groups = group_runs(rundir.find_runs(args.runs))
    if not groups:
        print(f"error: no finished finetune/pairtune runs under {args.runs}", file=sys.stderr)
        return 1
    geometry = geometry_of_runs(groups, args.device, args.data_root)
    for key, arms in geometry.items():
        paired, note = tables.paired_repeats(arms)
        print(f"\n### {group_name(key)}\n")
        print(tables.format_geometry_table(paired) + (f"\n{note}" if note else ""))
    print(tables.GEOMETRY_LEGEND)
    if args.json:
        payload = by_name({key: {arm: dict(rows) for arm, rows in arms.items()} for key, arms in geometry.items()})
        save(args.json, json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def summing_problem(results_list, args):
    """Why the runs of `confusion` cannot be summed into one output (None where they can)."""
    if len(results_list) == 1:
        return None
    kinds_list = [(r.get("method"), r.get("dataset"), r.get("backbone")) for r in results_list]
    kinds = {kind + (r.get("backbone_random_init", False),) for kind, r in zip(kinds_list, results_list)}
    if len(kinds) > 1:
        return f"only runs of one method, dataset and backbone are summed; got {sorted(map(str, kinds))}"
    if len({is_multilabel_result(r) for r in results_list}) > 1:
        return "some of these runs are multi-label (scored by mAP) and some are not: they cannot be summed"
    if not args.out:  # the sum is no single run's, so it does not go into one
        return "give --out DIR for the figure of several runs summed"
    return None


def cmd_confusion(args):
    try:
        results_list = [rundir.run_results(run) for run in args.runs]
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    problem = summing_problem(results_list, args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    if is_multilabel_result(results_list[0]):
        return class_ap_command(args, results_list)
    try:
        confusion, classes = summed_confusion(results_list)
        order = display_order(classes, read_class_order(args.class_order))
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    label = run_label(results_list)
    print(label)
    if len(classes) <= 20:
        width = max(len(c) for c in classes)
        print("rows: true class, columns: predicted (in the same order)")
        for i in order:
            print(f"  {classes[i]:>{width}} " + " ".join(f"{v:4d}" for v in confusion.astype(int)[i, order]))
    pairs, triplets = confused_pairs(confusion, args.top), confused_triplets(confusion, args.top)
    print(describe_confusion(confusion, classes, args.top, pairs, triplets))
    first_run = Path(args.runs[0])
    out = Path(args.out) if args.out else first_run if first_run.is_dir() else first_run.parent
    outputs, style = Outputs(), figure_style(args)
    pictures = [(out / "confusion.png").with_suffix("." + form) for form in style.formats]
    outputs.check([out / "confusion.json", *pictures])
    # (in the runs' order, as their results.json; display_order: the order of the figure and the printed matrix)
    summary = {"classes": classes, "confusion": confusion.astype(int).tolist(),
               "display_order": [classes[i] for i in order],
               "pairs": [[int(m), classes[a], classes[b]] for m, a, b in pairs],
               "triplets": [[int(m), classes[a], classes[b], classes[c]] for m, a, b, c in triplets]}
    outputs.add(out / "confusion.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    try:
        plot_confusion(confusion, classes, out / "confusion.png", label, outputs=outputs, order=order, style=style)
    except figures.MissingPackage as error:
        outputs.write()  # the numbers, without their figure
        print(f"error: {error}", file=sys.stderr)
        return 1
    outputs.write()
    print(f"wrote {', '.join(map(str, [out / 'confusion.json', *pictures]))}", file=sys.stderr)
    return 0


def run_label(results_list, several="summed over"):
    """'FINETUNE esc50 wav2vec2', and '(summed over 3 runs)' for several: the heading of `confusion`'s output."""
    first = results_list[0]
    label = f"{first.get('method', '?').upper()} {first.get('dataset', '?')} {first.get('backbone', '?')}"
    return label + (f" ({several} {len(results_list)} runs)" if len(results_list) > 1 else "")


def class_ap_command(args, results_list):
    """`confusion` of multi-label runs: the per-class AP table (class_ap_rows) printed and written to
    per-class-ap.json in --out (default: the first run's folder); no figure."""
    try:
        rows = class_ap_rows(results_list)
    except (ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    first_run = Path(args.runs[0])
    out = Path(args.out) if args.out else first_run if first_run.is_dir() else first_run.parent
    outputs = Outputs()
    outputs.check([out / "per-class-ap.json"])
    print(run_label(results_list, "AP: the mean of"))
    print(f"{MULTILABEL_NOTE}.")
    print(describe_class_ap(rows, len(results_list)))
    summary = {"multilabel": True, "runs": len(results_list), "note": MULTILABEL_NOTE,
               "classes": rows}  # lowest AP first; ap: the mean over runs, a fraction
    outputs.add(out / "per-class-ap.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    outputs.write()
    print(f"wrote {out / 'per-class-ap.json'} (no confusion figure for multi-label runs)", file=sys.stderr)
    return 0


def cmd_projection(args):
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    out, outputs = Path(args.out), Outputs()
    # --format, else the format --out names (fig.pdf), else PNG
    if args.format is None and out.suffix.lstrip(".").lower() in figures.FORMATS:
        args.format = [out.suffix.lstrip(".").lower()]
    style = figure_style(args)
    outputs.check([out.with_suffix("." + form) for form in style.formats] + [out.with_suffix(".json")])
    try:
        figures.pyplot()  # fail before encoding anything
        order = read_class_order(args.class_order)
        info = projection_figure(args.finetune, args.pairtune, out, classes, args.triplets, args.method, args.device,
                                 data_root=args.data_root, outputs=outputs, order=order, style=style)
    except (figures.MissingPackage, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    outputs.write()
    print(f"classes: {', '.join(info['classes'])} ({info['shown']}; from {info['classes_from']})")
    print(f"projection: FINETUNE {info['finetune']['method']}, PAIRTUNE {info['pairtune']['method']}")
    print(f"wrote {', '.join(map(str, info['files']))} and {out.with_suffix('.json')}", file=sys.stderr)
    return 0


def cmd_curves(args):
    if args.shots:  # few-shot learning curves instead of Figure 2
        curves = shot_curves(args.runs_dir)
        if not curves:
            print(f"error: no finished few-shot (--shots) runs under {args.runs_dir}", file=sys.stderr)
            return 1
        outputs = Outputs()
        pictures = write_shot_curves(curves, Path(args.out), outputs, figure_style(args))
        outputs.write()
        for path in pictures:
            print(f"wrote {path}")
        print(f"wrote {Path(args.out) / 'shots.csv'}")
        return 0
    try:
        figures.pyplot()
    except figures.MissingPackage as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    curves = curve_data(group_runs(rundir.find_runs(args.runs_dir)))
    if not curves:
        print(f"error: no finished finetune/pairtune runs with a log.jsonl under {args.runs_dir}", file=sys.stderr)
        return 1
    out, outputs, pictures = Path(args.out), Outputs(), []
    for key, entry in curves.items():
        pictures += figures.plot_curves(entry, out / f"curves-{group_stem(key)}.png",
                                        curve_title(entry, group_name(key)), outputs, figure_style(args))
    outputs.add(out / "curves.json", json.dumps(by_name(curves), indent=2, ensure_ascii=False) + "\n")
    outputs.write()
    for path in pictures:
        print(f"wrote {path}")
    return 0


def cmd_report(args):
    """Everything at once into one folder, with report.md linking it (run_all.sh's last step)."""
    runs_dir = Path(args.runs_dir)
    out = Path(args.out) if args.out else runs_dir / "report"
    if not runs_dir.is_dir():
        print(f"error: runs directory {runs_dir} does not exist", file=sys.stderr)
        return 1
    outputs = Outputs()  # written together at the end; a refusal leaves the last report whole
    try:
        style, order = figure_style(args), read_class_order(args.class_order)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    md = [f"# AudioConFit report: {runs_dir}", ""]

    # Table 2
    results = tables.collect_results(runs_dir)
    knn = any(r.get(tables.SCORE_FIELDS[r["metric"]][1]) is not None for r in results)
    # The user's own report.md or table is refused now, before the long part (every run's test features).
    stems = (["table"] if results else []) + (["table-both"] if knn else [])  # as `eval.py table` names them
    outputs.check([out / "report.md"] + [out / (stem + ext) for stem in stems for ext in (".md", ".csv", ".json")])
    if results:
        summary = tables.summarise(results)
        table = tables.format_table(summary)
        print(table, end="")
        outputs.add(out / "table.md", table)
        outputs.add(out / "table.csv", tables.table_csv(summary))
        outputs.add(out / "table.json", tables.table_json(summary))
        scores = set(summary.get("metrics", {"": "acc"}).values())  # "metrics": only where a dataset is multi-label
        md += [f"## Table 2: test {' and '.join({'acc': 'accuracy', 'map': 'mAP'}[m] for m in sorted(scores))}", "",
               table, "Also as [CSV](table.csv) and [JSON](table.json).", ""]
        if knn:
            both = tables.summarise_probe(results, "both")
            table = tables.format_table(both)
            outputs.add(out / "table-both.md", table)
            outputs.add(out / "table-both.csv", tables.table_csv(both))
            outputs.add(out / "table-both.json", tables.table_json(both))
            md += ["## Table 2 with the k-NN probe beside the linear one", "", table,
                   "Also as [CSV](table-both.csv) and [JSON](table-both.json).", ""]
    else:
        md += ["## Table 2: test accuracy", "", "No results.json of full-data runs found"
               + (" (few-shot runs: below)." if shot_curves(runs_dir, warn=lambda _: None) else "."), ""]
    missing = out / "missing.txt"  # run_all.sh's grid, less what finished
    if missing.is_file() and missing.read_text(encoding="utf-8").split():
        runs = missing.read_text(encoding="utf-8").split("\n")
        runs = [run for run in runs if run]
        md += [f"**Missing: {len(runs)} run(s)** of the grid did not finish (failed, still running or not "
               "started; their job.log says why), so the cells above hold fewer repeats or none:", "",
               *[f"- `{run}`" for run in runs], ""]
    few_shot = shot_curves(runs_dir, warn=lambda _: None)  # run_all.sh with SHOTS
    if few_shot:
        pictures = write_shot_curves(few_shot, out, outputs, style)
        md += ["## Few-shot learning curves: test accuracy against train clips per class", "",
               *[figure_link([p for p in pictures if p.stem == stem], stem) for stem in dict.fromkeys(
                   p.stem for p in pictures)],
               "", "Numbers (mean ± std over seeds, n per point): [shots.csv](shots.csv).", ""]

    try:
        figures.pyplot()
        drawing = True
    except figures.MissingPackage as error:
        drawing = False
        print(f"warning: no figures: {error}", file=sys.stderr)
        md += [f"**No figures:** {error}", ""]

    groups = group_runs(rundir.find_runs(runs_dir))
    geometry = geometry_of_runs(groups, args.device, args.data_root)
    curves = curve_data(groups)
    outputs.add(out / "curves.json", json.dumps(by_name(curves), indent=2, ensure_ascii=False) + "\n")
    outputs.add(out / "geometry.json", json.dumps(
        by_name({key: {arm: dict(rows) for arm, rows in arms.items()} for key, arms in geometry.items()}),
        indent=2) + "\n")

    for (dataset, backbone_name), arms in groups.items():
        name, stem = group_name((dataset, backbone_name)), group_stem((dataset, backbone_name))
        md += [f"## {name}", ""]
        paired, note = tables.paired_repeats(geometry[(dataset, backbone_name)])
        md += ["### Representation geometry (Table 3)", ""]
        if any(paired.values()):
            md += [tables.format_geometry_table(paired), tables.GEOMETRY_LEGEND, ""]
        md += [note, ""] if note else []

        results_of = {}  # arm: its runs' results.json, or why they cannot be read
        for arm, runs in arms.items():
            try:
                results_of[arm] = [rundir.run_results(run["dir"]) for run in runs]
            except (OSError, ValueError) as error:
                results_of[arm] = error
        multilabel = any(isinstance(found, list) and any(map(is_multilabel_result, found))
                         for found in results_of.values())
        md += ["### Per-class AP (multi-label: in place of the confusion)" if multilabel else "### Confusion", ""]
        confusions, class_aps = {}, {}
        for arm, runs in arms.items():
            if not runs:
                continue
            if multilabel:  # no one predicted class per clip: each class's test AP instead
                try:
                    if isinstance(results_of[arm], Exception):
                        raise results_of[arm]
                    class_aps[arm] = class_ap_rows(results_of[arm])
                except (ValueError, KeyError) as error:
                    md += [f"{arm.upper()}: no per-class AP ({error})", ""]
                    continue
                md += [f"**{arm.upper()}**, {len(runs)} run(s): {MULTILABEL_NOTE}.", "",
                       describe_class_ap(class_aps[arm], len(runs)), ""]
                outputs.add(out / f"per-class-ap-{stem}-{arm}.json", json.dumps(
                    {"multilabel": True, "runs": len(runs), "note": MULTILABEL_NOTE, "classes": class_aps[arm]},
                    indent=2, ensure_ascii=False) + "\n")
                continue
            try:
                if isinstance(results_of[arm], Exception):
                    raise results_of[arm]
                confusion, classes = summed_confusion(results_of[arm])
            except (OSError, ValueError, KeyError) as error:
                md += [f"{arm.upper()}: no confusion ({error})", ""]
                continue
            confusions[arm] = confusion
            md += [f"**{arm.upper()}**, summed over {len(runs)} run(s):", "", "```",
                   describe_confusion(confusion, classes), "```", ""]
            if drawing:
                files = plot_confusion(confusion, classes, out / f"confusion-{stem}-{arm}.png",
                                       f"{arm.upper()} {name}, {len(runs)} run(s)", outputs=outputs,
                                       order=display_order(classes, order, strict=False), style=style)
                md += [figure_link(files, f"{arm} confusion"), ""]

        if drawing and (dataset, backbone_name) in curves:
            entry = curves[(dataset, backbone_name)]
            files = figures.plot_curves(entry, out / f"curves-{stem}.png", curve_title(entry, name), outputs, style)
            md += ["### Convergence (Figure 2)", "", figure_link(files, "curves"),
                   f"FINETUNE's valid {figures.curve_score(entry)} is its classifier's; PAIRTUNE's is its selection "
                   "metric on encoder features (see log.jsonl). Numbers in [curves.json](curves.json).", ""]

        shared = sorted({repeat_name(r) for r in arms["finetune"]} & {repeat_name(r) for r in arms["pairtune"]})
        if drawing and shared:
            pick = shared[0]
            run_of = lambda arm: next(r for r in arms[arm] if repeat_name(r) == pick)
            try:
                info = projection_figure(run_of("finetune")["dir"], run_of("pairtune")["dir"], out / f"umap-{stem}.png",
                                         triplets=args.triplets, device=args.device,
                                         confusion=confusions.get("finetune"), data_root=args.data_root,
                                         outputs=outputs, order=order, style=style,
                                         class_ap=class_aps.get("finetune"))
                ranked_by = ("FINETUNE's per-class AP averaged over its runs" if multilabel
                             else "FINETUNE's confusion summed over its runs")
                # the hardest classes, or all where none is harder; the figure's two title lines as one
                md += [f"### Figure 3: {info['title']}".replace("\n", "; "), "",
                       figure_link(info["files"], "projection"),
                       f"{pick}; classes ({info['shown']}): {', '.join(info['classes'])}; chosen as "
                       f"{info['classes_from']}, {ranked_by}; projection: "
                       f"{info['finetune']['method']}.", ""]
            except Exception as error:  # keep the rest of the report
                print(f"warning: no projection figure for {name}: {error}", file=sys.stderr)
                md += [f"No projection figure: {error}", ""]

    outputs.add(out / "report.md", "\n".join(md) + "\n")
    outputs.write()
    print(f"wrote {out / 'report.md'}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def formats_list(text):
    """--format: one or more of png, pdf, svg, comma-separated."""
    forms = [form.strip().lower().lstrip(".") for form in text.split(",") if form.strip()]
    wrong = [form for form in forms if form not in figures.FORMATS]
    if wrong or not forms:
        raise argparse.ArgumentTypeError(f"{', '.join(wrong) or repr(text)}: the formats are "
                                         f"{', '.join(figures.FORMATS)} (one, or several comma-separated)")
    return list(dict.fromkeys(forms))


def add_figure_arguments(parser, class_order=True):
    """--format and --dpi of every command that draws figures, and --class-order of those that show classes."""
    parser.add_argument("--format", type=formats_list, metavar="png,pdf,svg", default=None,
                        help="file format(s) of each figure, comma-separated: png (pixels, at --dpi), pdf and svg "
                             "(vectors, for a paper) (default: png)")
    parser.add_argument("--dpi", type=positive_int, default=figures.DEFAULT_STYLE.dpi,
                        help="dots per inch of PNG figures (default: %(default)s)")
    if class_order:
        parser.add_argument("--class-order", metavar="A,B,C|FILE", default=None,
                            help="order of the classes in figures: comma-separated names, or a file of them (one a "
                                 "line); classes not named follow in natural order (default: natural order: numbers "
                                 "and number words by value, '2' < '10', 'zero' < 'one' < 'two'; the rest "
                                 "alphabetical)")


DATA_ROOT_HELP = ("where the runs' data is now, if it moved since training (folder holding <dataset>/manifest.csv; "
                  "default $CONFIT_DATA or data/): used only for test features not cached yet")
DEVICE_HELP = "device for encoding test features that are not cached yet: auto (CUDA if available), cuda, cpu"


def build_parser():
    parser = argparse.ArgumentParser(
        description="Evaluate and tables.summarise AudioConFit runs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1].split("``table`` and", 1)[0],
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    table = subcommands.add_parser(
        "table",
        help="results table (mean ± std test accuracy; macro mAP for multi-label datasets) from every results.json "
             "under RUNS_DIR",
    )
    table.add_argument("runs_dir", metavar="RUNS_DIR", help="directory searched recursively for results.json")
    table.add_argument(
        "--out",
        metavar="FILE_OR_DIR",
        default=None,
        help="directory for table.md/.csv/.json, or a .md file path (default: RUNS_DIR/table.md)",
    )
    table.add_argument("--probe", choices=tables.PROBES, default="linear",
                       help="which probe's test accuracy: the linear one (FineTune: its head), the k-NN one, or both")
    table.set_defaults(func=cmd_table)

    for name, text in (("isotropy", "anisotropy: mean cosine similarity over pairs of distinct test clips"),
                       ("dimcontrib", "dimensionality contribution to cosine similarity (Table 3)")):
        geometry = subcommands.add_parser(name, help=text)
        geometry.add_argument("--ckpt", nargs="+", metavar="RUN",
                              help="finetune.py or pairtune.py run folders (their test features: cached, else encoded)")
        geometry.add_argument("--features", nargs="+", metavar="X.npy", help="[N, d] feature matrices")
        geometry.add_argument("--runs", metavar="RUNS_DIR",
                              help="every run below RUNS_DIR: FINETUNE vs PAIRTUNE per dataset and backbone")
        geometry.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")
        geometry.add_argument("--device", default="auto", help=DEVICE_HELP)
        geometry.add_argument("--data-root", help=DATA_ROOT_HELP)
        geometry.set_defaults(func=cmd_geometry)

    confusion = subcommands.add_parser(
        "confusion", help="test confusion matrix of a run (or summed over runs): most confused pairs and triplets, "
                          "PNG; of multi-label runs: each class's test AP, lowest first (per-class-ap.json)")
    confusion.add_argument("runs", nargs="+", metavar="RUN",
                           help="a finetune run, a pairtune run (its probe/), or a results.json; several are summed")
    confusion.add_argument("--top", type=positive_int, default=10, help="how many pairs and triplets to list")
    confusion.add_argument("--out", metavar="DIR", help="folder for confusion.png/.json (default: the first RUN)")
    add_figure_arguments(confusion)
    confusion.set_defaults(func=cmd_confusion)

    projection = subcommands.add_parser(
        "projection", aliases=["umap"],
        help="Figure 3: 2-D map (UMAP, t-SNE or PCA) of the hardest classes' test features, FINETUNE and PAIRTUNE "
             "side by side (`umap`: its old name)")
    projection.add_argument("--finetune", required=True, metavar="RUN", help="a finetune.py run folder")
    projection.add_argument("--pairtune", required=True, metavar="RUN", help="a pairtune.py run folder")
    projection.add_argument("--classes", help="comma-separated class names (default: from FINETUNE's confusion; "
                                              "multi-label runs: its 3 x --triplets classes of lowest test AP)")
    projection.add_argument("--triplets", type=int, default=3,
                            help="how many disjoint most-confused triplets of FINETUNE to show (3, as in the paper)")
    projection.add_argument("--method", choices=["auto", "umap", "tsne", "pca"], default="auto",
                            help="auto: UMAP if umap-learn is installed, else t-SNE (scikit-learn), else PCA")
    projection.add_argument("--out", default="umap.png",
                            help="figure path, its suffix the format where --format is not given: umap.png, fig.pdf "
                                 "(a .json with the points goes next to it) (default: %(default)s)")
    add_figure_arguments(projection)
    projection.add_argument("--device", default="auto", help=DEVICE_HELP)
    projection.add_argument("--data-root", help=DATA_ROOT_HELP)
    projection.set_defaults(func=cmd_projection)

    curves = subcommands.add_parser("curves",
                                    help="Figure 2: valid accuracy (multi-label: mAP) per epoch, FINETUNE vs "
                                         "PAIRTUNE, mean ± std")
    curves.add_argument("runs_dir", metavar="RUNS_DIR", help="directory searched recursively for run folders")
    curves.add_argument("--out", required=True, metavar="DIR", help="folder for curves-*.png and curves.json")
    curves.add_argument("--shots", action="store_true",
                        help="few-shot learning curves instead: test accuracy against --shots K per method and "
                             "probe, mean ± std over seeds (shots-*.png, shots.csv)")
    add_figure_arguments(curves, class_order=False)
    curves.set_defaults(func=cmd_curves)

    report = subcommands.add_parser("report", help="Table 2, Table 3, confusion, Figures 2 and 3 into one folder")
    report.add_argument("runs_dir", metavar="RUNS_DIR", help="directory searched recursively for runs")
    report.add_argument("--out", metavar="DIR", help="default: RUNS_DIR/report")
    report.add_argument("--triplets", type=int, default=3, help="hardest triplets shown in Figure 3")
    report.add_argument("--device", default="auto", help=DEVICE_HELP)
    report.add_argument("--data-root", help=DATA_ROOT_HELP)
    add_figure_arguments(report)
    report.set_defaults(func=cmd_report)

    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    # Refused: a file eval.py would write over is not its own; MixedMetrics: a dataset has runs scored by
    # accuracy and runs scored by mAP, which no cell of Table 2 can average
    except (outdir.Refused, tables.MixedMetrics) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
