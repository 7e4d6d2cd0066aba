"""Summarise finished runs: the paper's Table 2 and Table 3, its analyses and its figures.

Every run is a folder with a ``run.json`` (marked finished at the end) and its ``results.json``
(test accuracy, confusion matrix); a training run adds a ``log.jsonl`` (the valid metric per epoch)
and keeps its encoder and pooled test features. ``find_runs`` is the one place that finds them.
This script turns them into the paper's section 3.3-3.4: the results table (mean ± sample std over
seeds or ESC-50 folds), anisotropy and dimensionality contribution of test features (Table 3),
confusion analysis, a 2-D map of the hardest classes (Figure 3) and convergence curves (Figure 2).

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

    # which classes a run confuses (several runs: summed), as text and a PNG heatmap
    python eval.py confusion runs/esc50/wav2vec2/finetune/fold-* --out reports/esc50-finetune

    # Figure 3 and Figure 2
    python eval.py umap --out fig3.png --finetune runs/esc50/wav2vec2/finetune/fold-1 \\
                        --pairtune runs/esc50/wav2vec2/pairtune/fold-1
    python eval.py curves runs/ --out figures/

    # exit status 0 if a run (for PairTune: and its probe) has finished with its results
    python eval.py done runs/esc50/wav2vec2/pairtune/fold-1

    # before a long run: jobs done and left, and device-hours left from earlier runs' log.jsonl
    python eval.py plan --search-jobs 12 --logs runs --logs runs-timing < jobs.tsv   # run_all.sh --plan

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
import math
import re
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np

import outdir

# Row order inside one backbone.  FINETUNE and PAIRTUNE are the two arms the
# paper compares, so they always get a row (showing "–" where runs are
# missing); FROZEN is an optional baseline and only shown when it was run.
METHOD_ORDER = ("finetune", "pairtune", "frozen")
ARMS = ("finetune", "pairtune")  # the two arms the paper compares

# Fields a results.json must carry.  ``seed``/``fold`` are checked separately
# because a run may give either one (ESC-50 runs are told apart by fold).
REQUIRED_FIELDS = ("method", "dataset", "backbone", "test_acc")

MISSING_CELL = "–"
RANDOM_INIT_SUFFIX = " (random init)"
DECIMALS = 2

LEGEND = (
    "Test accuracy (%), mean ± sample std (ddof=1) over seeds/folds; "
    "n = number of runs; b = training batch size, shown where cells differ; – = no runs. "
    "Bold: the better mean of FINETUNE vs PAIRTUNE for that backbone and "
    "dataset (no bold on a tie or when one arm is missing). k-NN rows: the k-NN probe on the same "
    "features (FINETUNE: its encoder's, before its head), the better arm marked among them."
)


def print_warning(message):
    """Report a problem with one input file without stopping the whole table."""
    print(f"warning: {message}", file=sys.stderr)


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
# Runs on disk: one folder each, found by its run.json
# ----------------------------------------------------------------------------------------------

# Every script writes OUT/run.json ("stage", arguments, provenance), marked "finished" once its
# results are on disk, and its test results in one place. probe.py writes a PairTune run's stage 2
# to RUN/probe/ as a run of its own; a probe of a frozen backbone, or a side experiment (other
# settings than its run's), to its own --out.
RESULTS_FILE = {"finetune": "results.json", "pairtune": "probe/results.json", "probe": "results.json"}


def is_runs_own_probe(probe_dir) -> bool:
    """RUN/probe/ beside RUN/run.json: the run's stage 2. probe.py refuses to write a probe with other
    settings than its run's there, so any other probe of a run is a side experiment."""
    probe_dir = Path(probe_dir)
    return probe_dir.name == "probe" and (probe_dir.parent / "run.json").is_file()


# The fields of run.json that finding and grouping runs read, and their JSON types where present.
RUN_FIELDS = {"stage": str, "method": str, "dataset": str, "backbone": str, "args": dict}


def read_run_json(run_dir):
    """RUN/run.json decoded; ValueError naming the file where it is missing, not a JSON object, or gives
    one of RUN_FIELDS another type: no record the scripts write, and one that would stop a report later."""
    path = Path(run_dir) / "run.json"
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{run_dir}: not a run folder (no run.json)") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:  # "[[[[..." recurses
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(run, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(run).__name__}")
    for field, kind in RUN_FIELDS.items():
        if run.get(field) is not None and not isinstance(run[field], kind):
            raise ValueError(f"{path}: not a run record ({field!r} is {type(run[field]).__name__}, "
                             f"not {'an object' if kind is dict else 'a string'})")
    return run


def results_file(run_dir, run):
    """A finished run's results.json (RESULTS_FILE), or None while there is none: the run has not
    finished, or a PairTune run's probe has not (probe.py marks RUN/probe/run.json finished after
    writing its results.json, as the training scripts do)."""
    stage = run.get("stage")
    if stage not in RESULTS_FILE or not run.get("finished"):
        return None
    if stage == "pairtune":
        try:
            if not read_run_json(Path(run_dir) / "probe").get("finished"):
                return None
        except ValueError:
            return None
    path = Path(run_dir) / RESULTS_FILE[stage]
    return path if path.is_file() else None


def run_is_done(run_dir) -> bool:
    """A run has finished and its results are written (find_runs's rule): run_all.sh skips it."""
    try:
        return results_file(run_dir, read_run_json(run_dir)) is not None
    except ValueError:  # no run.json yet, or one cut short by a kill: not done
        return False


def find_runs(runs_dir, stages=ARMS, warn=print_warning, few_shot=False):
    """Finished runs below runs_dir (any depth) whose stage is in `stages`, one dict per run.json: the
    one place where eval.py and run_all.sh learn which runs exist. Few-shot runs (--shots K) are
    another experiment: only with few_shot=True (`eval.py curves --shots`), and then only they.

    Each dict: dir, stage, method (the stage; a probe's: "pairtune" or "frozen"), dataset, backbone
    (label, random init flagged), seed, fold, run (the decoded run.json), results (results_file: None
    for a PairTune run not yet probed). Unfinished runs are skipped with a warning. Two folders holding
    the same run (stage, method, dataset, backbone, seed, fold), e.g. a copy, count once: a run's own
    results before a side probe's, then the first in path order, so which is kept does not depend on
    the file system.
    """
    found_runs, other_experiment = [], 0
    for path in sorted(Path(runs_dir).rglob("run.json")):
        try:
            run = read_run_json(path.parent)
        except ValueError as error:
            warn(f"skipping {error}")
            continue
        if run.get("stage") not in stages:
            continue
        if not run.get("finished"):
            warn(f"skipping {path.parent}: the run has not finished")
            continue
        args = run.get("args") or {}
        if (args.get("shots") is not None) != few_shot:
            other_experiment += 1
            continue
        found_runs.append({
            "dir": path.parent, "stage": run["stage"], "method": run.get("method", run["stage"]),
            "dataset": run.get("dataset"),
            "backbone": str(run.get("backbone")) + (RANDOM_INIT_SUFFIX if run.get("backbone_random_init") else ""),
            "seed": args.get("seed"), "fold": args.get("fold"), "shots": args.get("shots"), "run": run,
            "results": results_file(path.parent, run),
        })
    if other_experiment and not few_shot:
        warn(f"left out {other_experiment} few-shot run folder(s) under {runs_dir} (--shots): "
             "see `python eval.py curves --shots`")
    kept, seen = set(), {}  # kept: id() of the runs kept; seen: run identity -> the file (or folder) kept
    side_probe = lambda found: found["stage"] == "probe" and not is_runs_own_probe(found["dir"])
    for found in sorted(found_runs, key=side_probe):  # stable: path order otherwise
        key = tuple(found[field] for field in ("stage", "method", "dataset", "backbone", "seed", "fold", "shots"))
        where = found["results"] or found["dir"]
        if key in seen:
            warn(f"duplicate run ({key[0]}: method={key[1]}, dataset={key[2]}, backbone={key[3]}, seed={key[4]}, "
                 f"fold={key[5]}{'' if key[6] is None else f', shots={key[6]}'}) in {seen[key]} and {where}; "
                 f"keeping {seen[key]}")
            continue
        seen[key] = where
        kept.add(id(found))
    return [found for found in found_runs if id(found) in kept]


def run_results(run):
    """The decoded results.json of a finished run folder (results_file), or of a results.json path."""
    run = Path(run)
    if run.is_file():
        return json.loads(run.read_text(encoding="utf-8"))
    run_json = read_run_json(run)
    path = results_file(run, run_json)
    if path is None:
        hint = f"; for a PairTune run: `python probe.py --ckpt {run}`" if run_json.get("stage") == "pairtune" else ""
        raise ValueError(f"{run}: no results yet (finish the run{hint})")
    return json.loads(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------
# Reading results.json files
# ----------------------------------------------------------------------------------------------


def _is_int(value):
    # bool is a subclass of int in Python, but ``"seed": true`` is a mistake.
    return isinstance(value, int) and not isinstance(value, bool)


def parse_result(data):
    """Check one decoded results.json and return the fields the table needs.

    Returns ``(result, None)`` on success or ``(None, problem)`` where
    ``problem`` is a short human-readable reason the file cannot be used.
    """
    if not isinstance(data, dict):
        return None, f"expected a JSON object, got {type(data).__name__}"

    missing = [field for field in REQUIRED_FIELDS if field not in data]
    if missing:
        return None, "missing required field(s): " + ", ".join(missing)

    method = data["method"]
    if not isinstance(method, str) or method.lower() not in METHOD_ORDER:
        return None, f"unknown method {method!r} (expected one of {', '.join(METHOD_ORDER)})"
    method = method.lower()

    for field in ("dataset", "backbone"):
        if not isinstance(data[field], str) or not data[field].strip():
            return None, f"field {field!r} must be a non-empty string, got {data[field]!r}"

    test_acc = data["test_acc"]
    # Accuracies are stored as fractions; a value like 81.2 is almost certainly
    # a percentage written by mistake and would silently wreck the mean.
    if (
        not isinstance(test_acc, (int, float))
        or isinstance(test_acc, bool)
        or not math.isfinite(test_acc)
        or not 0.0 <= test_acc <= 1.0
    ):
        return None, f"test_acc must be a fraction in [0, 1], got {test_acc!r}"

    seed = data.get("seed")
    fold = data.get("fold")
    for name, value in (("seed", seed), ("fold", fold)):
        if value is not None and not _is_int(value):
            return None, f"field {name!r} must be an integer or null, got {value!r}"
    # Without a seed or a fold, repeated runs could not be told apart and
    # would all look like duplicates of each other.
    if seed is None and fold is None:
        return None, "needs an integer 'seed' or 'fold' (both missing or null)"

    random_init = data.get("backbone_random_init", False)
    if not isinstance(random_init, bool):
        return None, f"backbone_random_init must be true or false, got {random_init!r}"

    knn_test_acc = data.get("knn_test_acc")  # the k-NN probe's (knn.py); absent in older runs
    if knn_test_acc is not None and (not isinstance(knn_test_acc, (int, float)) or isinstance(knn_test_acc, bool)
                                     or not 0.0 <= knn_test_acc <= 1.0):
        return None, f"knn_test_acc must be a fraction in [0, 1], got {knn_test_acc!r}"

    result = {
        "method": method,
        "dataset": data["dataset"],
        "backbone": data["backbone"],
        "backbone_random_init": random_init,
        "seed": seed,
        "fold": fold,
        "test_acc": float(test_acc),
        "valid_acc": data.get("valid_acc"),
        "knn_test_acc": None if knn_test_acc is None else float(knn_test_acc),
    }
    return result, None


def collect_results(runs_dir, warn=print_warning):
    """Table 2's inputs: the results.json of every finished finetune.py and probe.py run below
    ``runs_dir`` (``find_runs``: a run found twice counts once), checked by ``parse_result``. A file
    that is not valid JSON or lacks required fields is skipped with a warning. Each returned dict
    carries the parsed fields plus ``path`` (the file it came from), in path order.
    """
    results = []
    for found in find_runs(runs_dir, ("finetune", "probe"), warn):
        path = found["results"]
        if path is None:
            warn(f"skipping {found['dir']}: marked finished, but it has no results.json")
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, UnicodeDecodeError, ValueError) as error:
            # json.JSONDecodeError is a ValueError.
            warn(f"skipping {path}: not valid JSON ({error})")
            continue
        result, problem = parse_result(data)
        if problem is not None:
            warn(f"skipping {path}: {problem}")
            continue
        result["path"] = str(path)
        result["train_batch_size"] = training_batch_size(found)
        results.append(result)
    return sorted(results, key=lambda r: r["path"])


def training_batch_size(found):
    """--batch-size of the run that trained the encoder: a FineTune run's own, a probe's PairTune run's
    (the folder above it); None for a frozen probe or where it is not recorded."""
    if found["stage"] == "finetune":
        return (found["run"].get("args") or {}).get("batch_size")
    if found["method"] == "pairtune" and is_runs_own_probe(found["dir"]):
        try:
            return (read_run_json(Path(found["dir"]).parent).get("args") or {}).get("batch_size")
        except ValueError:
            return None
    return None


# ----------------------------------------------------------------------------------------------
# Aggregating runs into table cells
# ----------------------------------------------------------------------------------------------


def backbone_label(result):
    """Row label for a backbone; random-init smoke-test backbones are flagged
    so their near-chance numbers are never mistaken for pre-trained ones."""
    if result["backbone_random_init"]:
        return result["backbone"] + RANDOM_INIT_SUFFIX
    return result["backbone"]


def cell_stats(accuracies):
    """Mean and sample std (ddof=1) in percent; std is None for a single run
    because one run says nothing about the spread."""
    values = 100.0 * np.asarray(accuracies, dtype=float)
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if len(values) > 1 else None
    return {"n": int(len(values)), "mean": mean, "std": std}


def _none_first(value):
    return (value is not None, value if value is not None else 0)


def summarise(results):
    """Group runs into cells of the table.

    Returns a JSON-serialisable nested dict whose key order is the display
    order::

        {"datasets": ["esc50", "gtzan"],
         "backbones": {
             "wav2vec2": {
                 "finetune": {"gtzan": {"n": 5, "mean": 76.1, "std": 5.89,
                                        "best": True, "runs": [...]}},
                 "pairtune": {...},
                 "frozen":   {...}},      # only if the backbone has FROZEN runs
             ...}}

    ``mean``/``std`` are percentages.  A (backbone, method, dataset) cell with
    no runs is simply absent.  ``best`` marks the better of FINETUNE and
    PAIRTUNE in its (backbone, dataset) pair.
    """
    datasets = sorted({r["dataset"] for r in results})

    # Sort backbones by name first so "tiny" and "tiny (random init)" sit
    # next to each other with the pre-trained one first.
    backbone_keys = sorted({(r["backbone"], r["backbone_random_init"]) for r in results})

    backbones = {}
    for name, random_init in backbone_keys:
        own = [r for r in results if (r["backbone"], r["backbone_random_init"]) == (name, random_init)]
        label = backbone_label(own[0])
        present_methods = {r["method"] for r in own}
        methods = {}
        for method in METHOD_ORDER:
            if method not in ARMS and method not in present_methods:
                continue
            cells = {}
            for dataset in datasets:
                runs = [r for r in own if r["method"] == method and r["dataset"] == dataset]
                if not runs:
                    continue
                # List runs by seed then fold (None first) so the JSON is stable.
                runs.sort(key=lambda r: (_none_first(r["seed"]), _none_first(r["fold"])))
                cell = cell_stats([r["test_acc"] for r in runs])
                cell["batch_sizes"] = sorted({r.get("train_batch_size") for r in runs} - {None})
                cell["best"] = False
                cell["runs"] = [
                    {"seed": r["seed"], "fold": r["fold"], "test_acc": r["test_acc"], "path": r["path"]}
                    for r in runs
                ]
                cells[dataset] = cell
            methods[method] = cells
        backbones[label] = methods

    for methods in backbones.values():
        for dataset in datasets:
            _mark_best(methods, dataset)

    return {"datasets": datasets, "backbones": backbones}


PROBES = ("linear", "knn", "both")
KNN_SUFFIX = " k-NN"  # a method's row of k-NN probe accuracies, in --probe knn / both tables


def summarise_probe(results, probe="linear"):
    """summarise() of the linear probe's accuracy (FineTune: its own linear head), of the k-NN probe's
    (`knn_test_acc`; runs without one are left out), or both: each method's k-NN row after its linear
    row, the better arm marked within each probe."""
    nearest = [{**r, "test_acc": r["knn_test_acc"]} for r in results if r.get("knn_test_acc") is not None]
    if probe == "linear":
        return summarise(results)
    renamed = lambda summary: {label: {method + KNN_SUFFIX: cells for method, cells in methods.items()}
                               for label, methods in summary["backbones"].items()}
    if probe == "knn":
        summary = summarise(nearest)
        return {"datasets": summary["datasets"], "backbones": renamed(summary)}
    linear, knn_rows = summarise(results), renamed(summarise(nearest)) if nearest else {}
    backbones = {}
    for label, methods in linear["backbones"].items():
        backbones[label] = {}
        for method, cells in methods.items():
            backbones[label][method] = cells
            if method + KNN_SUFFIX in knn_rows.get(label, {}):
                backbones[label][method + KNN_SUFFIX] = knn_rows[label][method + KNN_SUFFIX]
    return {"datasets": linear["datasets"], "backbones": backbones}


def _mark_best(methods, dataset):
    """Flag the better of the compared arms for one (backbone, dataset)."""
    cells = [methods.get(m, {}).get(dataset) for m in ARMS]
    if any(cell is None for cell in cells):
        return
    # Compare at the printed precision: two means that print identically are
    # a tie to the reader, so neither should be bold.
    means = [round(cell["mean"], DECIMALS) for cell in cells]
    if means[0] == means[1]:
        return
    cells[int(np.argmax(means))]["best"] = True


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def format_cell(cell):
    """Text of one cell without bold, e.g. ``76.10 ± 5.89 (n=5)``."""
    if cell is None:
        return MISSING_CELL
    if cell["std"] is None:
        return f"{cell['mean']:.{DECIMALS}f} (n={cell['n']})"
    return f"{cell['mean']:.{DECIMALS}f} ± {cell['std']:.{DECIMALS}f} (n={cell['n']})"


def _md_escape(text):
    # A "|" inside a name would split the markdown cell.
    return text.replace("|", "\\|")


def format_table(summary):
    """Markdown table of ``summary`` followed by the one-line legend."""
    datasets = summary["datasets"]
    header = ["Backbone", "Method"] + [_md_escape(d) for d in datasets]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * len(datasets)) + "|",
    ]
    # The training batch size goes into the cells where they differ (e.g. chosen by run_all.sh's search).
    batch_sizes = {tuple(cell.get("batch_sizes") or ()) for methods in summary["backbones"].values()
                   for cells in methods.values() for cell in cells.values()} - {()}
    for label, methods in summary["backbones"].items():
        for method, cells in methods.items():
            name = method[:-len(KNN_SUFFIX)].upper() + KNN_SUFFIX if method.endswith(KNN_SUFFIX) else method.upper()
            row = [_md_escape(label), name]
            for dataset in datasets:
                cell = cells.get(dataset)
                text = format_cell(cell)
                if len(batch_sizes) > 1 and cell is not None and cell.get("batch_sizes"):
                    text = text[:-1] + f", b={'/'.join(map(str, cell['batch_sizes']))})"
                if cell is not None and cell["best"]:
                    text = f"**{text}**"
                row.append(text)
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(LEGEND)
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("backbone", "method", "dataset", "n", "mean_pct", "std_pct", "best", "cell")


def table_rows(summary):
    """One flat record per non-empty cell, in table order (for CSV)."""
    rows = []
    for label, methods in summary["backbones"].items():
        for method, cells in methods.items():
            for dataset in summary["datasets"]:
                cell = cells.get(dataset)
                if cell is None:
                    continue
                rows.append({
                    "backbone": label,
                    "method": method,
                    "dataset": dataset,
                    "n": cell["n"],
                    "mean_pct": cell["mean"],
                    "std_pct": cell["std"],
                    "best": cell["best"],
                    "cell": format_cell(cell),
                })
    return rows


def write_csv(summary, path, outputs=None):
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in table_rows(summary):
        # Empty std for n=1 rather than "None", so spreadsheets read it
        # as a blank number.
        row["std_pct"] = "" if row["std_pct"] is None else row["std_pct"]
        writer.writerow(row)
    save(path, handle.getvalue(), outputs)


def write_json(summary, path, outputs=None):
    payload = {"legend": LEGEND, **summary}
    save(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n", outputs)


def output_paths(runs_dir, out):
    """Where table.md/.csv/.json go: ``--out`` may name a directory (files
    inside it are called table.*) or a markdown file (siblings share its stem)."""
    if out is None:
        base = Path(runs_dir) / "table"
    else:
        out = Path(out)
        if out.is_dir() or out.suffix == "":
            base = out / "table"
        elif out.suffix.lower() in (".csv", ".json"):
            # The .csv/.json siblings would overwrite the markdown file.
            raise ValueError(f"--out must be a directory or a markdown file, not {out}")
        else:
            return out, out.with_suffix(".csv"), out.with_suffix(".json")
    return base.with_suffix(".md"), base.with_suffix(".csv"), base.with_suffix(".json")


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
# Training runs: grouping, logs, test features
# ----------------------------------------------------------------------------------------------

def group_runs(runs):
    """{(dataset, backbone): {"finetune": [runs], "pairtune": [runs]}}, runs ordered by fold, then seed."""
    groups = {}
    for run in sorted(runs, key=lambda r: (str(r["dataset"]), r["backbone"], _none_first(r["fold"]),
                                           _none_first(r["seed"]), str(r["dir"]))):  # str: a run.json may lack one
        groups.setdefault((run["dataset"], run["backbone"]), {arm: [] for arm in ARMS})[run["method"]].append(run)
    return dict(sorted(groups.items(), key=lambda item: tuple(map(str, item[0]))))


def repeat_name(run):
    """How runs of one group are told apart: 'seed-0', or 'fold-3' for fold datasets (whose runs use
    seed 0, as run_all.sh does; another seed is added: 'fold-3-seed-1')."""
    if run["fold"] is None:
        return f"seed-{run['seed']}"
    return f"fold-{run['fold']}" + ("" if run["seed"] in (None, 0) else f"-seed-{run['seed']}")


def read_log_lines(run_dir, warn=print_warning, needs=()):
    """The JSON objects of a run's log.jsonl that hold the fields `needs`. A damaged line (cut short, bytes
    that are not text, not an object, a field missing or not a number) is left out with one warning per
    file naming its line numbers: one bad log must not stop a report."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise ValueError(f"{path}: missing (every finetune.py or pairtune.py run writes one)")
    lines, damaged = [], []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw.decode("utf-8"))
            if all(isinstance(line[field], (int, float)) and math.isfinite(line[field]) for field in needs):
                lines.append(line)
                continue
        except (UnicodeDecodeError, ValueError, RecursionError, TypeError, KeyError):  # TypeError: not an object
            pass
        damaged.append(number)
    if damaged:
        shown = ", ".join(map(str, damaged[:5])) + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
        warn(f"skipping line{'s' if len(damaged) > 1 else ''} {shown} of {path}: not a JSON object"
             + (f" with {' and '.join(needs)}" if needs else "") + " (damaged, or cut short by a kill)")
    return lines


CURVE_FIELDS = ("epoch", "valid_acc")  # what a log line needs to be a point of Figure 2


def epoch_accuracies(lines):
    """{epoch: valid_acc} of log lines. An epoch logged twice (a run killed between its log line and its
    checkpoint, then resumed) keeps its last line: the one the run went on from."""
    return {int(line["epoch"]): float(line["valid_acc"]) for line in lines}


def read_log(run_dir, warn=print_warning):
    """{epoch: valid_acc} from a run's log.jsonl."""
    return epoch_accuracies(read_log_lines(run_dir, warn, needs=CURVE_FIELDS))


def valid_metric(lines, default: str) -> str:
    """What a run's valid_acc measures, as its log.jsonl lines name it: "classifier" (FineTune's head) or
    PairTune's --select-by metric on encoder features (centroid, knn, probe); `default` for logs
    written before the field existed."""
    return lines[-1].get("valid_metric", default) if lines else default


def run_test_features(run_dir, device="auto", data_root=None):
    """(features [N, d] float64, labels [N] int64, classes) of a finished run's test split, as
    encoded by the run's encoder/ (its best-valid epoch) through backbone.extract_features.

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
    run = read_run_json(run_dir)
    if run.get("stage") not in ARMS or not run.get("finished") or not (run_dir / "encoder").is_dir():
        raise ValueError(f"{run_dir}: not a finished finetune.py or pairtune.py run (no final encoder/)")
    args = run["args"]
    encoder = backbone.load_encoder(str(run_dir / "encoder"))
    max_seconds = encoder.chunk_seconds(args["max_seconds"])  # as probe.py and finetune.py chunk
    cache_dir = runs.feature_dir(run_dir, run["dataset"], args.get("fold"))
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
                                                device, ("test",))["test"]
    return features.double().numpy(), labels.numpy(), classes


def load_features(spec, device="auto", data_root=None):
    """A [N, d] array from a .npy file, or a run folder's test features (run_test_features)."""
    path = Path(spec)
    if path.suffix == ".npy":
        return np.load(path)
    return run_test_features(path, device, data_root)[0]


# ----------------------------------------------------------------------------------------------
# Table 3 over a runs tree: the geometry of FINETUNE vs PAIRTUNE test features
# ----------------------------------------------------------------------------------------------

GEOMETRY_COLUMNS = (  # (field, header, decimals, better): the paper's arrows
    ("anisotropy", "anisotropy", 3, None),
    ("top1", "top 1 ↓", 3, "lower"), ("top2", "top 2 ↓", 3, "lower"), ("top3", "top 3 ↓", 3, "lower"),
    ("dims50", "50% ↑", 1, "higher"), ("dims80", "80% ↑", 1, "higher"), ("dims90", "90% ↑", 1, "higher"),
)
GEOMETRY_LEGEND = (
    "Test features (mean-pooled encoder output, the best-valid epoch); mean ± sample std over runs. "
    "anisotropy: mean cosine over pairs of distinct clips. top k: share of |CC_i| carried by the k "
    "dimensions with the largest |CC_i|; q%: dimensions needed to reach a share of q. "
    "Bold: the better arm by the paper's arrows."
)


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


def geometry_cells(rows):
    """{field: {"mean", "std", "n"}} over runs (std None for one run), from dimension_contribution rows.
    A field a run could not give (None: dims of all-zero contributions) is averaged over the others."""
    cells = {}
    for field, *_ in GEOMETRY_COLUMNS:
        values = np.array([row[field] for _, row in rows if row[field] is not None], dtype=float)
        cells[field] = {"mean": float(values.mean()) if len(values) else None,
                        "std": float(values.std(ddof=1)) if len(values) > 1 else None, "n": int(len(values))}
    return cells


def paired_repeats(arms):
    """Keep, in each arm, only the runs whose repeat (seed or fold) the other arm has too, so that
    Table 3 compares like with like. Returns (kept arms, a note naming what was left out, or "")."""
    names = [{name for name, _ in arms.get(arm, [])} for arm in ARMS]
    if not all(names):
        return arms, ""
    shared = names[0] & names[1]
    left_out = sorted((names[0] | names[1]) - shared)
    kept = {arm: [(name, row) for name, row in rows if name in shared] for arm, rows in arms.items()}
    note = f"Left out, having no run in the other arm: {', '.join(left_out)}." if left_out else ""
    return kept, note


def format_geometry_table(arms):
    """Table 3 for one (dataset, backbone): rows FINETUNE / PAIRTUNE, the better cell in bold."""
    cells = {arm: geometry_cells(rows) for arm, rows in arms.items() if rows}
    header = ["Method", "n"] + [title for _, title, _, _ in GEOMETRY_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for arm in ARMS:
        if arm not in cells:
            continue
        row = [arm.upper(), str(len(arms[arm]))]
        for field, _, decimals, better in GEOMETRY_COLUMNS:
            cell = cells[arm][field]
            if cell["mean"] is None:
                row.append(MISSING_CELL)
                continue
            text = f"{cell['mean']:.{decimals}f}" + ("" if cell["std"] is None else f" ± {cell['std']:.{decimals}f}")
            other = cells.get("pairtune" if arm == "finetune" else "finetune")
            if better and other is not None and other[field]["mean"] is not None:
                mine, theirs = round(cell["mean"], decimals), round(other[field]["mean"], decimals)
                if (mine < theirs) if better == "lower" else (mine > theirs):
                    text = f"**{text}**"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


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
# Figures (matplotlib and umap-learn are optional: nothing else in the project imports them)
# ----------------------------------------------------------------------------------------------


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


def plot_confusion(confusion, classes, path, title, max_classes=40, outputs=None):
    """Heatmap of where each true class's clips went, as fractions of that class.

    The diagonal (the correct share) is greyed out and its accuracy put in the row label, so the
    colour scale is spent on the errors. Above `max_classes` classes (TIMIT has 630), only the
    classes of the most confused pairs are drawn, with their names, and the title says so."""
    plt = pyplot()
    c = np.asarray(confusion, dtype=float)
    shown = list(range(len(classes)))
    if len(classes) > max_classes:
        shown = []
        for _, a, b in confused_pairs(c, top=len(classes) ** 2):
            shown += [i for i in (a, b) if i not in shown]
            if len(shown) >= max_classes:
                break
        shown = sorted(shown[:max_classes]) or list(range(max_classes))
        title += f"\n{len(shown)} of {len(classes)} classes: those of the most confused pairs"
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


def save_figure(plt, fig, path, outputs=None):
    """The figure rendered in memory (its format from the path's suffix, as savefig would choose), then
    saved like any other output: over eval.py's own files only."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".").lower() or "png", dpi=100)
    plt.close(fig)
    save(path, buffer.getvalue(), outputs)


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
                raise MissingPackage("--method umap needs umap-learn: pip install umap-learn") from None
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
                raise MissingPackage("--method tsne needs scikit-learn: pip install scikit-learn") from None
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


def class_colours(count):
    plt = pyplot()
    palette = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [palette(i % palette.N) for i in range(count)]


def plot_projection(panels, class_names, path, title, outputs=None):
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


def projection_figure(finetune_dir, pairtune_dir, path, classes=None, triplets=3, method="auto", device="auto",
                      confusion=None, data_root=None, outputs=None):
    """Figure 3: the test features of the hardest classes, FINETUNE and PAIRTUNE side by side.

    The classes come from `classes` (names), else from the FINETUNE confusion (`confusion`, or the
    finetune run's own): its `triplets` most confused disjoint triplets. Each arm is projected on its
    own. Returns what was drawn (also written next to the PNG as JSON)."""
    setups = [json.loads((Path(d) / "run.json").read_text(encoding="utf-8")) for d in (finetune_dir, pairtune_dir)
              if (Path(d) / "run.json").is_file()]
    if len(setups) == 2 and ({s["dataset"] for s in setups} != {setups[0]["dataset"]}
                             or {s["args"].get("fold") for s in setups} != {setups[0]["args"].get("fold")}):
        raise ValueError(f"{finetune_dir} and {pairtune_dir} were tested on different data (dataset or fold)")
    arms = {}
    for arm, run_dir in (("finetune", finetune_dir), ("pairtune", pairtune_dir)):
        arms[arm] = run_test_features(run_dir, device, data_root)
    names = arms["finetune"][2]
    if arms["pairtune"][2] != names:
        raise ValueError(f"{finetune_dir} and {pairtune_dir} have different classes")
    if classes:
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise ValueError(f"unknown class(es) {', '.join(unknown)}; the classes are: {', '.join(names)}")
        chosen = [names.index(c) for c in classes]
        source = "--classes"
    else:
        if confusion is None:
            confusion = run_results(finetune_dir)["confusion"]
        chosen = hardest_classes(confusion, triplets)
        source = f"the {triplets} most confused disjoint triplets (or pairs) of FINETUNE's test confusion"
        if not chosen:  # FINETUNE made no errors: no class is harder than another
            chosen = list(range(min(len(names), 3 * triplets)))
            source = f"the first {len(chosen)} classes (FINETUNE made no test errors)"
    panels, drawn = [], {}
    run_dirs = {"finetune": finetune_dir, "pairtune": pairtune_dir}
    for arm, (features, labels, _) in arms.items():
        keep = np.isin(labels, chosen)
        relabel = np.array([chosen.index(int(y)) for y in labels[keep]], dtype=int)
        coords, used = project_2d(features[keep], method)
        panels.append((f"{arm.upper()} ({used})", coords, relabel))
        drawn[arm] = {"run": str(run_dirs[arm]), "method": used,
                      "points": [[float(x), float(y), names[chosen[c]]] for (x, y), c in zip(coords, relabel)]}
    chosen_names = [names[i] for i in chosen]
    plot_projection(panels, chosen_names, path, "Test features of the hardest classes", outputs)
    info = {"classes": chosen_names, "classes_from": source, **drawn}
    save(Path(path).with_suffix(".json"), json.dumps(info, indent=2, ensure_ascii=False) + "\n", outputs)
    return info


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
                    lines = read_log_lines(run["dir"], warn, needs=CURVE_FIELDS)  # read once: one warning
                except (OSError, ValueError) as error:
                    warn(f"skipping the curve of {run['dir']}: {error}")
                    continue
                for epoch, valid_acc in epoch_accuracies(lines).items():
                    per_epoch.setdefault(epoch, []).append(100.0 * valid_acc)
                if lines and first is None:
                    first = (run, lines)
            if not per_epoch:
                continue
            epochs = sorted(per_epoch)
            values = [np.array(per_epoch[e]) for e in epochs]
            run, lines = first
            name = valid_metric(lines, "classifier" if arm == "finetune" else
                                (run["run"].get("args") or {}).get("select_by", "centroid"))
            metric = ("its classifier's accuracy" if name == "classifier" else
                      f"{name} accuracy of encoder features")
            entry[arm] = {"epochs": epochs, "mean": [float(v.mean()) for v in values],
                          "std": [float(v.std(ddof=1)) if len(v) > 1 else None for v in values],
                          "n": [int(len(v)) for v in values], "metric": metric}
        if entry:
            curves[key] = entry
    return curves


def plot_curves(entry, path, title, outputs=None):
    """Figure 2: valid accuracy per epoch, mean line with a ± std band over runs, one line per arm."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for arm, colour in zip(ARMS, ("tab:orange", "tab:blue")):
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


def save_line_figure(plt, fig, ax, path, xlabel, ylabel, title, outputs=None):
    """The labels, grid and legend of Figure 2 and the few-shot curves, then the PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(plt, fig, path, outputs)


# ----------------------------------------------------------------------------------------------
# Few-shot learning curves: test accuracy against K train clips per class (--shots K)
# ----------------------------------------------------------------------------------------------

SHOT_SERIES = (  # (method, results.json field, label): the linear and the k-NN probe of each method
    ("finetune", "test_acc", "FINETUNE"), ("finetune", "knn_test_acc", "FINETUNE + k-NN probe"),
    ("pairtune", "test_acc", "PAIRTUNE + linear probe"), ("pairtune", "knn_test_acc", "PAIRTUNE + k-NN probe"),
    ("frozen", "test_acc", "FROZEN + linear probe"), ("frozen", "knn_test_acc", "FROZEN + k-NN probe"))
SHOT_CSV_COLUMNS = ("dataset", "backbone", "series", "shots", "n", "mean_pct", "std_pct", "seeds")


def shot_curves(runs_dir, warn=print_warning):
    """{(dataset, backbone): {series label: {K: cell_stats + seeds}}} of every finished few-shot run
    (finetune.py, or probe.py of a PairTune run or a frozen encoder) below runs_dir, over seeds (or folds)."""
    points = {}
    for found in find_runs(runs_dir, ("finetune", "probe"), warn, few_shot=True):
        if found["results"] is None:
            continue
        results = json.loads(Path(found["results"]).read_text(encoding="utf-8"))
        for method, field, label in SHOT_SERIES:
            if found["method"] == method and results.get(field) is not None:
                repeat = found["seed"] if found["fold"] is None else f"fold-{found['fold']}"
                series = points.setdefault((found["dataset"], found["backbone"]), {}).setdefault(label, {})
                series.setdefault(int(found["shots"]), []).append((repeat, results[field]))
    curves = {}
    for key in sorted(points, key=lambda key: tuple(map(str, key))):  # a dataset may be None: no run.json field
        curves[key] = {}
        for _, _, label in SHOT_SERIES:  # in SHOT_SERIES order, so figures and files are stable
            if label in points[key]:
                curves[key][label] = {
                    shots: {**cell_stats([acc for _, acc in sorted(runs, key=str)]),
                            "seeds": [repeat for repeat, _ in sorted(runs, key=str)]}
                    for shots, runs in sorted(points[key][label].items())}
    return curves


def plot_shot_curves(series, path, title, outputs=None):
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


def write_shot_curves(curves, out: Path, outputs) -> list[Path]:
    """shots-<dataset>-<backbone>.png per group (without matplotlib: none, with a note) and shots.csv,
    into `outputs`."""
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
    figures = []
    try:
        pyplot()
    except MissingPackage as error:
        print(f"note: no few-shot figure: {error}", file=sys.stderr)
        return figures
    for key, series in curves.items():
        path = out / f"shots-{group_stem(key)}.png"
        plot_shot_curves(series, path, f"Test accuracy against shots per class: {group_name(key)}", outputs)
        figures.append(path)
    return figures


def group_name(key):
    """'esc50 · wav2vec2': how a (dataset, backbone) group is titled and keyed in JSON files."""
    return f"{key[0]} · {key[1]}"


def group_stem(key):
    """'esc50-wav2vec2': the file-name-safe form, for the group's figures."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{key[0]}-{key[1]}").strip("_")


def by_name(per_group):
    """{(dataset, backbone): x} -> {'dataset · backbone': x}, for JSON."""
    return {group_name(key): value for key, value in per_group.items()}


# ----------------------------------------------------------------------------------------------
# Subcommands
# ----------------------------------------------------------------------------------------------


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
    groups = group_runs(find_runs(args.runs))
    if not groups:
        print(f"error: no finished finetune/pairtune runs under {args.runs}", file=sys.stderr)
        return 1
    geometry = geometry_of_runs(groups, args.device, args.data_root)
    for key, arms in geometry.items():
        paired, note = paired_repeats(arms)
        print(f"\n### {group_name(key)}\n")
        print(format_geometry_table(paired) + (f"\n{note}" if note else ""))
    print(GEOMETRY_LEGEND)
    if args.json:
        payload = by_name({key: {arm: dict(rows) for arm, rows in arms.items()} for key, arms in geometry.items()})
        save(args.json, json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def cmd_confusion(args):
    try:
        results_list = [run_results(run) for run in args.runs]
        confusion, classes = summed_confusion(results_list)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if len(results_list) > 1:
        kinds_list = [(r.get("method"), r.get("dataset"), r.get("backbone")) for r in results_list]
        kinds = {kind + (r.get("backbone_random_init", False),) for kind, r in zip(kinds_list, results_list)}
        if len(kinds) > 1:
            print(f"error: only runs of one method, dataset and backbone are summed; got {sorted(map(str, kinds))}",
                  file=sys.stderr)
            return 1
        if not args.out:  # the sum is no single run's, so it does not go into one
            print("error: give --out DIR for the figure of several runs summed", file=sys.stderr)
            return 1
    first = results_list[0]
    label = f"{first.get('method', '?').upper()} {first.get('dataset', '?')} {first.get('backbone', '?')}"
    if len(results_list) > 1:
        label += f" (summed over {len(results_list)} runs)"
    print(label)
    if len(classes) <= 20:
        width = max(len(c) for c in classes)
        print("rows: true class, columns: predicted (in the same order)")
        for name, row in zip(classes, confusion.astype(int)):
            print(f"  {name:>{width}} " + " ".join(f"{v:4d}" for v in row))
    pairs, triplets = confused_pairs(confusion, args.top), confused_triplets(confusion, args.top)
    print(describe_confusion(confusion, classes, args.top, pairs, triplets))
    first_run = Path(args.runs[0])
    out = Path(args.out) if args.out else first_run if first_run.is_dir() else first_run.parent
    outputs = Outputs()
    outputs.check([out / "confusion.json", out / "confusion.png"])
    summary = {"classes": classes, "confusion": confusion.astype(int).tolist(),
               "pairs": [[int(m), classes[a], classes[b]] for m, a, b in pairs],
               "triplets": [[int(m), classes[a], classes[b], classes[c]] for m, a, b, c in triplets]}
    outputs.add(out / "confusion.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    try:
        plot_confusion(confusion, classes, out / "confusion.png", label, outputs=outputs)
    except MissingPackage as error:
        outputs.write()  # the numbers, without their figure
        print(f"error: {error}", file=sys.stderr)
        return 1
    outputs.write()
    print(f"wrote {out / 'confusion.json'}, {out / 'confusion.png'}", file=sys.stderr)
    return 0


def cmd_umap(args):
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    out, outputs = Path(args.out), Outputs()
    outputs.check([out, out.with_suffix(".json")])  # before encoding anything, as pyplot()
    try:
        pyplot()  # fail before encoding anything
        info = projection_figure(args.finetune, args.pairtune, out, classes, args.triplets, args.method, args.device,
                                 data_root=args.data_root, outputs=outputs)
    except (MissingPackage, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    outputs.write()
    print(f"classes: {', '.join(info['classes'])} (from {info['classes_from']})")
    print(f"projection: FINETUNE {info['finetune']['method']}, PAIRTUNE {info['pairtune']['method']}")
    print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
    return 0


def cmd_curves(args):
    if args.shots:  # few-shot learning curves instead of Figure 2
        curves = shot_curves(args.runs_dir)
        if not curves:
            print(f"error: no finished few-shot (--shots) runs under {args.runs_dir}", file=sys.stderr)
            return 1
        outputs = Outputs()
        figures = write_shot_curves(curves, Path(args.out), outputs)
        outputs.write()
        for path in figures:
            print(f"wrote {path}")
        print(f"wrote {Path(args.out) / 'shots.csv'}")
        return 0
    try:
        pyplot()
    except MissingPackage as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    curves = curve_data(group_runs(find_runs(args.runs_dir)))
    if not curves:
        print(f"error: no finished finetune/pairtune runs with a log.jsonl under {args.runs_dir}", file=sys.stderr)
        return 1
    out, outputs = Path(args.out), Outputs()
    figures = [out / f"curves-{group_stem(key)}.png" for key in curves]
    for (key, entry), path in zip(curves.items(), figures):
        plot_curves(entry, path, f"Valid accuracy per epoch: {group_name(key)}", outputs)
    outputs.add(out / "curves.json", json.dumps(by_name(curves), indent=2, ensure_ascii=False) + "\n")
    outputs.write()
    for path in figures:
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
    md = [f"# AudioConFit report: {runs_dir}", ""]

    # Table 2
    results = collect_results(runs_dir)
    knn = any(r.get("knn_test_acc") is not None for r in results)
    # The user's own report.md or table is refused now, before the long part (every run's test features).
    tables = (["table"] if results else []) + (["table-knn"] if knn else [])
    outputs.check([out / "report.md"] + [out / (stem + ext) for stem in tables for ext in (".md", ".csv", ".json")])
    if results:
        summary = summarise(results)
        table = format_table(summary)
        print(table, end="")
        outputs.add(out / "table.md", table)
        write_csv(summary, out / "table.csv", outputs)
        write_json(summary, out / "table.json", outputs)
        md += ["## Table 2: test accuracy", "", table, "Also as [CSV](table.csv) and [JSON](table.json).", ""]
        if knn:
            both = summarise_probe(results, "both")
            table = format_table(both)
            outputs.add(out / "table-knn.md", table)
            write_csv(both, out / "table-knn.csv", outputs)
            write_json(both, out / "table-knn.json", outputs)
            md += ["## Table 2 with the k-NN probe beside the linear one", "", table,
                   "Also as [CSV](table-knn.csv) and [JSON](table-knn.json).", ""]
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
        pictures = write_shot_curves(few_shot, out, outputs)
        md += ["## Few-shot learning curves: test accuracy against train clips per class", "",
               *[f"![{path.stem}]({path.name})" for path in pictures],
               "", "Numbers (mean ± std over seeds, n per point): [shots.csv](shots.csv).", ""]

    try:
        pyplot()
        figures = True
    except MissingPackage as error:
        figures = False
        print(f"warning: no figures: {error}", file=sys.stderr)
        md += [f"**No figures:** {error}", ""]

    groups = group_runs(find_runs(runs_dir))
    geometry = geometry_of_runs(groups, args.device, args.data_root)
    curves = curve_data(groups)
    outputs.add(out / "curves.json", json.dumps(by_name(curves), indent=2, ensure_ascii=False) + "\n")
    outputs.add(out / "geometry.json", json.dumps(
        by_name({key: {arm: dict(rows) for arm, rows in arms.items()} for key, arms in geometry.items()}),
        indent=2) + "\n")

    for (dataset, backbone_name), arms in groups.items():
        name, stem = group_name((dataset, backbone_name)), group_stem((dataset, backbone_name))
        md += [f"## {name}", ""]
        paired, note = paired_repeats(geometry[(dataset, backbone_name)])
        md += ["### Representation geometry (Table 3)", ""]
        if any(paired.values()):
            md += [format_geometry_table(paired), GEOMETRY_LEGEND, ""]
        md += [note, ""] if note else []

        md += ["### Confusion", ""]
        confusions = {}
        for arm, runs in arms.items():
            if not runs:
                continue
            try:
                confusion, classes = summed_confusion([run_results(run["dir"]) for run in runs])
            except (OSError, ValueError, KeyError) as error:
                md += [f"{arm.upper()}: no confusion ({error})", ""]
                continue
            confusions[arm] = confusion
            md += [f"**{arm.upper()}**, summed over {len(runs)} run(s):", "", "```",
                   describe_confusion(confusion, classes), "```", ""]
            if figures:
                png = f"confusion-{stem}-{arm}.png"
                plot_confusion(confusion, classes, out / png, f"{arm.upper()} {name}, {len(runs)} run(s)",
                               outputs=outputs)
                md += [f"![{arm} confusion]({png})", ""]

        if figures and (dataset, backbone_name) in curves:
            png = f"curves-{stem}.png"
            plot_curves(curves[(dataset, backbone_name)], out / png, f"Valid accuracy per epoch: {name}", outputs)
            md += ["### Convergence (Figure 2)", "", f"![curves]({png})",
                   "FINETUNE's valid accuracy is its classifier's; PAIRTUNE's is its selection metric on "
                   "encoder features (see log.jsonl). Numbers in [curves.json](curves.json).", ""]

        shared = sorted({repeat_name(r) for r in arms["finetune"]} & {repeat_name(r) for r in arms["pairtune"]})
        if figures and shared:
            pick = shared[0]
            run_of = lambda arm: next(r for r in arms[arm] if repeat_name(r) == pick)
            png = f"umap-{stem}.png"
            try:
                info = projection_figure(run_of("finetune")["dir"], run_of("pairtune")["dir"], out / png,
                                         triplets=args.triplets, device=args.device,
                                         confusion=confusions.get("finetune"), data_root=args.data_root,
                                         outputs=outputs)
                md += ["### Hardest classes (Figure 3)", "",
                       f"![projection]({png})",
                       f"{pick}; classes: {', '.join(info['classes'])}, from {info['classes_from']} "
                       f"(summed over its runs); projection: {info['finetune']['method']}.", ""]
            except Exception as error:  # keep the rest of the report
                print(f"warning: no projection figure for {name}: {error}", file=sys.stderr)
                md += [f"No projection figure: {error}", ""]

    outputs.add(out / "report.md", "\n".join(md) + "\n")
    outputs.write()
    print(f"wrote {out / 'report.md'}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------
# Planning a grid: the jobs left and their device-hours, from earlier runs' logs
# ----------------------------------------------------------------------------------------------

# run_all.sh's job list, `eval.py plan`'s stdin: one job a line, tab-separated, fold empty for seed
# datasets. A pairtune job is pairtune.py, then probe.py on the same out.
JOB_FIELDS = ("number", "out", "dataset", "backbone", "arm", "epochs", "fold")
CENTROID_CLIPS_PER_CLASS = 32  # pairtune.py's --centroid-clips-per-class default, for runs that do not say


def read_jobs(lines):
    """The job list as dicts (epochs and fold as integers); ValueError naming a line that cannot be read."""
    jobs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")  # not strip(): an empty fold is a trailing tab
        if len(fields) != len(JOB_FIELDS):
            raise ValueError(f"job line {number}: {len(fields)} tab-separated fields, expected {len(JOB_FIELDS)} "
                             f"({', '.join(JOB_FIELDS)})")
        job = dict(zip(JOB_FIELDS, fields))
        if job["arm"] not in ARMS:
            raise ValueError(f"job line {number}: arm {job['arm']!r} is not one of {', '.join(ARMS)}")
        try:
            job["epochs"] = int(job["epochs"])
            job["fold"] = int(job["fold"]) if job["fold"].strip() else None
        except ValueError:
            raise ValueError(f"job line {number}: epochs {job['epochs']!r} and fold {job['fold']!r} must be "
                             "integers (fold empty for seed datasets)") from None
        jobs.append(job)
    return jobs


def measured_device(run, lines) -> str:
    """The device a run's epochs ran on: its --device ("cuda:1" counts as cuda); "auto" is told apart by
    peak_memory_mb, which runs.throughput logs on CUDA only. run.json names no GPU model."""
    device = str((run.get("args") or {}).get("device", "auto")).split(":")[0]
    if device == "auto":
        device = "cuda" if any("peak_memory_mb" in line for line in lines) else "cpu"
    return device


def speed_logs(dirs, warn=print_warning):
    """Every epoch measured so far: one dict per finetune.py or pairtune.py log.jsonl below `dirs` (missing
    ones skipped) with its run.json ("run"), its lines that carry `seconds`, and the device they ran on.
    Unfinished runs count too: their epochs were measured all the same."""
    logs, seen = [], set()
    for root in map(Path, dirs):
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("log.jsonl")):
            if path.resolve() in seen:  # a tree given twice, or inside another
                continue
            seen.add(path.resolve())
            try:
                run, text = read_run_json(path.parent), path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError, ValueError) as error:
                warn(f"not timing {path}: {error}")
                continue
            lines = []
            for line in text.splitlines():
                try:
                    lines.append(json.loads(line))
                except ValueError:  # a blank line, or one cut short by a kill
                    continue
            lines = [line for line in lines if isinstance(line, dict)
                     and isinstance(line.get("seconds"), (int, float)) and line["seconds"] > 0]
            if run.get("stage") in ARMS and lines:
                logs.append({"run": run, "lines": lines, "device": measured_device(run, lines)})
    return logs


def centroid_clips_per_class(run) -> int:
    """The size of PairTune's per-class train subset for its valid metric, as the run was given it."""
    return (run.get("args") or {}).get("centroid_clips_per_class") or CENTROID_CLIPS_PER_CLASS


def metric_clips(arm, train, valid, classes, per_class=CENTROID_CLIPS_PER_CLASS) -> int:
    """Clips the per-epoch valid metric encodes: valid, and for PairTune also its train subset of up to
    per_class clips a class, taken as min(train, per_class x classes) (exact when every class has at least
    per_class train clips, or none has)."""
    return valid + (min(train, per_class * classes) if arm == "pairtune" else 0)


def planned_clips(manifest, fold) -> dict:
    """{"train", "valid", "classes"}: what a job will train and select on, from its manifest's rows alone (no
    audio is read): load_splits's rule, valid carved from train where the manifest has none."""
    import data  # imports torch
    clips = data.read_manifest(manifest)
    if fold is None:
        train, valid = [c for c in clips if c.split == "train"], [c for c in clips if c.split == "valid"]
    else:  # the job's fold is test, the other folds train
        train, valid = [c for c in clips if c.fold != fold], []
    if not valid:
        train, valid = data.carve_valid(train)
    return {"train": len(train), "valid": len(valid), "classes": len({c.label for c in train})}


def scaled_rates(logs):
    """(training clips per second, the valid metric's seconds per clip, assumed), medians over the logs'
    epochs. Logs without valid_seconds (older ones) give the metric a third of a training step's time per clip
    (forward only, no backward: assumed); logs without clips_per_s time the training pass as the epoch less
    the metric."""
    rates, per_clip, assumed = [], [], False
    for log in logs:
        run = log["run"]
        train, valid = run["clips"]["train"], run["clips"]["valid"]
        metric = max(1, metric_clips(run["stage"], train, valid, len(run["classes"]), centroid_clips_per_class(run)))
        for line in log["lines"]:
            seconds, valid_seconds, rate = line["seconds"], line.get("valid_seconds"), line.get("clips_per_s")
            if rate is None:
                rate = (train / max(seconds - valid_seconds, 1e-3) if valid_seconds is not None
                        else (train + metric / 3) / seconds)
            assumed = assumed or valid_seconds is None
            rates.append(rate)
            per_clip.append(valid_seconds / metric if valid_seconds is not None else 1 / (3 * rate))
    return float(np.median(rates)), float(np.median(per_clip)), assumed


def estimate_cell(jobs, logs, data_root=None) -> dict:
    """Seconds per epoch of each of one cell's jobs ("seconds"; None: unmeasured, "problem" says why) and
    their source, best first: (a) logs of the same dataset, backbone and arm: their median epoch; (b) logs of
    the same backbone and arm on another dataset (the one with the most epochs logged), scaled by clips: the
    job's train clips / clips_per_s plus its valid metric's clips x seconds per clip (scaled_rates);
    (c) no log: unmeasured. A log's backbone is run.json's (backbone.display_name of the --backbone
    given), or the --backbone string itself, for a local path that has moved."""
    import data  # imports torch
    dataset, name, arm = jobs[0]["cell"]
    ours = [log for log in logs if log["run"]["stage"] == arm and (
        log["run"].get("backbone") == name or (log["run"].get("args") or {}).get("backbone") == jobs[0]["backbone"])]
    same = [log for log in ours if log["run"].get("dataset") == dataset]
    if same:
        seconds = float(np.median([line["seconds"] for log in same for line in log["lines"]]))
        return {"seconds": [seconds] * len(jobs), "source": "same cell", "logs": same, "assumed": False}
    by_dataset = {}  # logs that can be scaled: their run.json counts the clips
    for log in ours:
        clips = log["run"].get("clips")
        if isinstance(clips, dict) and {"train", "valid"} <= clips.keys() and log["run"].get("classes"):
            by_dataset.setdefault(str(log["run"].get("dataset")), []).append(log)
    if not by_dataset:
        return {"seconds": None, "problem": f"no log of {name} {arm}"}
    source = max(sorted(by_dataset), key=lambda other: sum(len(log["lines"]) for log in by_dataset[other]))
    try:
        manifest = data.resolve_dataset(jobs[0]["dataset"], data_root)
        clips = {fold: planned_clips(manifest, fold) for fold in {job["fold"] for job in jobs}}
    except (OSError, data.DataError) as error:  # no clips to scale by
        return {"seconds": None, "problem": f"no manifest to scale {source}'s logs by: {error}"}
    rate, per_clip, assumed = scaled_rates(by_dataset[source])
    per_class = centroid_clips_per_class(by_dataset[source][0]["run"])
    seconds = [clips[job["fold"]]["train"] / rate + metric_clips(arm, **clips[job["fold"]], per_class=per_class)
               * per_clip for job in jobs]
    return {"seconds": seconds, "source": f"scaled from {source}", "logs": by_dataset[source], "assumed": assumed}


def timing_command(job, timing_dir, data_root=None) -> str:
    """One epoch of a cell's first job, into timing_dir (the last --logs), where the next plan finds its log."""
    import shlex
    dataset, name, arm = job["cell"]
    words = [f"{arm}.py", "--dataset", job["dataset"], "--backbone", job["backbone"], "--epochs", "1"]
    words += ["--fold", str(job["fold"])] if job["fold"] is not None else []
    words += ["--data-root", data_root] if data_root else []
    words += ["--out", str(Path(timing_dir) / dataset / name.replace("/", "_") / arm)]  # run_all.sh's naming
    return "python " + " ".join(shlex.quote(word) for word in words)


def aligned(rows, right=()):
    """Rows of strings as space-aligned columns; the columns in `right` right-aligned (numbers)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            .rstrip() for row in rows]


def cmd_plan(args):
    """What a grid costs before a long run: its jobs done and left, and the device-hours of those left per
    dataset x backbone x arm (estimate_cell), from the log.jsonl of earlier runs below --logs. Reads
    run_all.sh's job list (JOB_FIELDS) on stdin."""
    import backbone  # run.json names a backbone by backbone.display_name
    import data
    try:
        jobs = read_jobs(sys.stdin)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.search_jobs > len(jobs):
        print(f"error: --search-jobs {args.search_jobs}, but stdin lists {len(jobs)} jobs", file=sys.stderr)
        return 1
    for job in jobs:
        job.update(done=run_is_done(job["out"]), hours=None,
                   cell=(data.dataset_name(job["dataset"]), backbone.display_name(job["backbone"]), job["arm"]))

    def counted(part):
        done = sum(job["done"] for job in part)
        return f"{len(part)} total, {done} done, {len(part) - done} left"
    search, grid = jobs[:args.search_jobs], jobs[args.search_jobs:]
    print(f"jobs: {counted(jobs)}" + (f" (batch-size search: {counted(search)}; grid: {counted(grid)})"
                                      if search else ""))
    cells = {}  # in job order
    for job in jobs:
        if not job["done"]:
            cells.setdefault(job["cell"], []).append(job)
    if not cells:
        print("nothing left to run")
        return 0

    logs, timing_dir = speed_logs(args.logs), args.logs[-1] if args.logs else "runs-timing"
    rows = [("dataset", "backbone", "arm", "left", "s/epoch", "hours", "source")]
    notes, assumed, scaled = [], False, False
    for (dataset, name, arm), left in cells.items():
        estimate = estimate_cell(left, logs, args.data_root)
        if estimate["seconds"] is None:
            rows.append((dataset, name, arm, str(len(left)), "–", "–", "unmeasured"))
            notes.append((f"unmeasured {dataset} {name} {arm}: {estimate['problem'].rstrip('.')}. Time one epoch:",
                          timing_command(left[0], timing_dir, args.data_root)))
            continue
        for job, seconds in zip(left, estimate["seconds"]):
            job["hours"] = job["epochs"] * seconds / 3600
        hours = sum(job["hours"] for job in left)
        devices = "+".join(sorted({log["device"] for log in estimate["logs"]}))
        logs_used = f"{len(estimate['logs'])} log{'s' if len(estimate['logs']) > 1 else ''}"
        rows.append((dataset, name, arm, str(len(left)), f"{3600 * hours / sum(job['epochs'] for job in left):.1f}",
                     f"{hours:.2f}", f"{estimate['source']} ({logs_used}, {devices})" + "*" * estimate["assumed"]))
        assumed, scaled = assumed or estimate["assumed"], scaled or estimate["source"] != "same cell"

    left = [job for job in jobs if not job["done"]]
    unmeasured = [job for job in left if job["hours"] is None]
    total = sum(job["hours"] or 0 for job in left)
    rows.append(("total", "", "", str(len(left)), "", f"{total:.2f}",
                 f"+ {len(unmeasured)} unmeasured job(s)" if unmeasured else ""))
    print("\n".join(aligned(rows, right=(3, 4, 5))))
    if search:
        hours_of = lambda part: sum(job["hours"] or 0 for job in part if not job["done"])
        print(f"of which batch-size search {hours_of(search):.2f} h, grid {hours_of(grid):.2f} h")
    say = lambda text: print(textwrap.fill(text, 100, subsequent_indent="  ", break_on_hyphens=False,
                                           break_long_words=False))  # paths stay whole
    say("hours: training epochs only (start-up, the final test pass and PairTune's probe.py are left out; a job "
        "cut short counts in full), on the device the logs ran on (run.json's --device; no GPU model is "
        "recorded): another device, batch size or crop takes other hours.")
    if scaled:
        say("scaled: train clips / median clips_per_s + the valid metric's clips (valid; PairTune also up to 32 "
            "train clips a class) x its median seconds per clip, taking clips of about the same length.")
    if assumed:
        say("*: no valid_seconds in those logs: the valid metric is assumed to take a third of a training step "
            "per clip (forward only).")
    for problem, command in notes:
        say(problem)
        print(f"  {command}")
    if notes:
        say(f"(timing runs go to {timing_dir}, the last --logs; add the grid's EXTRA_ARGS, and a timing run's "
            "first epoch includes warm-up, so its estimate errs high)")
    return 0


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def cmd_done(args):
    """Exit 0 when every RUN is done (run_is_done), else 1; with --print, also print the done ones,
    one a line (run_all.sh asks about its whole grid at once). Quiet otherwise: run_all.sh prints
    what it does."""
    done = [run for run in args.run if run_is_done(run)]
    if args.print:
        print("\n".join(done), end="\n" if done else "")
    return 0 if len(done) == len(args.run) else 1


def cmd_best_batch(args):
    """The batch-size search's choice for one dataset x backbone x arm: the batch size whose run
    (SEARCH_DIR/batch-B/<first seed or fold>/) has the best valid accuracy (FineTune: its classifier
    at the selected epoch; PairTune: its probe's), never test; ties go to the smaller batch. Prints
    the batch size; exit 1, naming what is missing, until every searched batch size has finished."""
    valid, missing = {}, []
    for batch in args.batch_sizes:
        finished = [run for run in find_runs(Path(args.search_dir) / f"batch-{batch}", warn=lambda _: None)
                    if run["results"] is not None]
        if not finished:
            missing.append(f"{Path(args.search_dir) / f'batch-{batch}'}")
            continue
        if len(finished) > 1:
            print(f"error: {len(finished)} finished runs below {finished[0]['dir'].parent}; the search keeps one "
                  f"(the first seed or fold)", file=sys.stderr)
            return 1
        valid[batch] = json.loads(finished[0]["results"].read_text(encoding="utf-8"))["valid_acc"]
    if missing:
        print(f"error: the batch-size search has not finished: no results in {', '.join(missing)} "
              f"(run the search's jobs first: bash run_all.sh --count search)", file=sys.stderr)
        return 1
    best = max(sorted(valid), key=lambda batch: valid[batch])  # max keeps the first (smallest) of ties
    print(best)
    return 0


def cmd_table(args):
    runs_dir = Path(args.runs_dir)
    if not runs_dir.is_dir():
        print(f"error: runs directory {runs_dir} does not exist or is not a directory", file=sys.stderr)
        return 1
    try:
        md_path, csv_path, json_path = output_paths(runs_dir, args.out)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    outputs = Outputs()
    outputs.check([md_path, csv_path, json_path])  # before the table is printed: a refusal prints only why

    results = collect_results(runs_dir)
    if not results:
        print(f"error: no usable results.json files found under {runs_dir}", file=sys.stderr)
        return 1

    summary = summarise_probe(results, args.probe)
    if not summary["backbones"]:
        print(f"error: no run under {runs_dir} has a k-NN probe result (knn_test_acc)", file=sys.stderr)
        return 1
    table = format_table(summary)
    print(table, end="")

    outputs.add(md_path, table)
    write_csv(summary, csv_path, outputs)
    write_json(summary, json_path, outputs)
    outputs.write()
    # Status goes to stderr so stdout stays pure markdown for piping.
    print(f"wrote {md_path}, {csv_path}, {json_path} ({len(results)} runs)", file=sys.stderr)
    return 0


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


DATA_ROOT_HELP = ("where the runs' data is now, if it moved since training (folder holding <dataset>/manifest.csv; "
                  "default $CONFIT_DATA or data/): used only for test features not cached yet")
DEVICE_HELP = "device for encoding test features that are not cached yet: auto (CUDA if available), cuda, cpu"


def build_parser():
    parser = argparse.ArgumentParser(
        description="Evaluate and summarise AudioConFit runs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1].split("``table`` and", 1)[0],
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    table = subcommands.add_parser(
        "table",
        help="results table (mean ± std test accuracy) from every results.json under RUNS_DIR",
    )
    table.add_argument("runs_dir", metavar="RUNS_DIR", help="directory searched recursively for results.json")
    table.add_argument(
        "--out",
        metavar="FILE_OR_DIR",
        default=None,
        help="directory for table.md/.csv/.json, or a .md file path (default: RUNS_DIR/table.md)",
    )
    table.add_argument("--probe", choices=PROBES, default="linear",
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
        "confusion", help="test confusion matrix of a run (or summed over runs): most confused pairs and triplets, PNG")
    confusion.add_argument("runs", nargs="+", metavar="RUN",
                           help="a finetune run, a pairtune run (its probe/), or a results.json; several are summed")
    confusion.add_argument("--top", type=positive_int, default=10, help="how many pairs and triplets to list")
    confusion.add_argument("--out", metavar="DIR", help="folder for confusion.png/.json (default: the first RUN)")
    confusion.set_defaults(func=cmd_confusion)

    projection = subcommands.add_parser(
        "umap", help="Figure 3: 2-D map of the hardest classes' test features, FINETUNE and PAIRTUNE side by side")
    projection.add_argument("--finetune", required=True, metavar="RUN", help="a finetune.py run folder")
    projection.add_argument("--pairtune", required=True, metavar="RUN", help="a pairtune.py run folder")
    projection.add_argument("--classes", help="comma-separated class names (default: from FINETUNE's confusion)")
    projection.add_argument("--triplets", type=int, default=3,
                            help="how many disjoint most-confused triplets of FINETUNE to show (3, as in the paper)")
    projection.add_argument("--method", choices=["auto", "umap", "tsne", "pca"], default="auto",
                            help="auto: UMAP if umap-learn is installed, else t-SNE (scikit-learn), else PCA")
    projection.add_argument("--out", default="umap.png", help="PNG path (a .json with the points goes next to it)")
    projection.add_argument("--device", default="auto", help=DEVICE_HELP)
    projection.add_argument("--data-root", help=DATA_ROOT_HELP)
    projection.set_defaults(func=cmd_umap)

    curves = subcommands.add_parser("curves",
                                    help="Figure 2: valid accuracy per epoch, FINETUNE vs PAIRTUNE, mean ± std")
    curves.add_argument("runs_dir", metavar="RUNS_DIR", help="directory searched recursively for run folders")
    curves.add_argument("--out", required=True, metavar="DIR", help="folder for curves-*.png and curves.json")
    curves.add_argument("--shots", action="store_true",
                        help="few-shot learning curves instead: test accuracy against --shots K per method and "
                             "probe, mean ± std over seeds (shots-*.png, shots.csv)")
    curves.set_defaults(func=cmd_curves)

    plan = subcommands.add_parser(
        "plan", help="jobs done and left of a grid (job list on stdin, as run_all.sh writes it) and their "
                     "device-hours, from earlier runs' log.jsonl")
    plan.add_argument("--search-jobs", type=non_negative_int, default=0, metavar="S",
                      help="the first S jobs are the batch-size search's, the rest the grid's (counted apart)")
    plan.add_argument("--logs", action="append", default=[], metavar="RUNS_DIR",
                      help="a folder searched for log.jsonl of earlier runs (repeatable; missing ones skipped); "
                           "the last is where the suggested timing runs go")
    plan.add_argument("--data-root", help="folder holding <dataset>/manifest.csv, for clip counts "
                                          "(default $CONFIT_DATA or data/)")
    plan.set_defaults(func=cmd_plan)

    report = subcommands.add_parser("report", help="Table 2, Table 3, confusion, Figures 2 and 3 into one folder")
    report.add_argument("runs_dir", metavar="RUNS_DIR", help="directory searched recursively for runs")
    report.add_argument("--out", metavar="DIR", help="default: RUNS_DIR/report")
    report.add_argument("--triplets", type=int, default=3, help="hardest triplets shown in Figure 3")
    report.add_argument("--device", default="auto", help=DEVICE_HELP)
    report.add_argument("--data-root", help=DATA_ROOT_HELP)
    report.set_defaults(func=cmd_report)

    done = subcommands.add_parser("done", help="exit status 0 if every RUN has finished with its results (for scripts)")
    done.add_argument("run", metavar="RUN", nargs="+",
                      help="a finetune.py, pairtune.py (and its probe) or probe.py output folder")
    done.add_argument("--print", action="store_true", help="print the RUNs that are done, one a line")
    done.set_defaults(func=cmd_done)

    best_batch = subcommands.add_parser(
        "best-batch", help="the batch-size search's choice for one cell, by valid accuracy (for run_all.sh)")
    best_batch.add_argument("search_dir", metavar="SEARCH_DIR",
                            help="the search's folder of one dataset x backbone x arm, holding batch-B/ folders")
    best_batch.add_argument("batch_sizes", metavar="B", type=int, nargs="+", help="the batch sizes searched")
    best_batch.set_defaults(func=cmd_best_batch)

    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except outdir.Refused as error:  # a file eval.py would write over is not its own
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
