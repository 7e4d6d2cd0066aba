"""The paper's tables as text. Table 2: the test accuracy of every finished run (a multi-label dataset's: its
macro mAP), as mean ± sample std per backbone, method and dataset; Table 3: the geometry of the two arms' test
features, side by side.

Table 2: collect_results finds the runs (rundir.find_runs) and checks each results.json (parse_result);
summarise groups them into cells (summarise_probe: the linear probe's, the k-NN probe's, or both);
format_table, table_csv and table_json render them. Table 3: eval.py computes each run's row
(dimension_contribution of its test features); format_geometry_table averages and renders them.
eval.py's commands write what these return. Numpy and the standard library only, so a table is made
wherever the results were copied to.
"""
import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from rundir import RANDOM_INIT_SUFFIX, find_runs, is_runs_own_probe, print_warning, read_run_json

# Row order inside one backbone.  FINETUNE and PAIRTUNE are the two arms the
# paper compares, so they always get a row (showing "–" where runs are
# missing); FROZEN is an optional baseline and only shown when it was run.
METHOD_ORDER = ("finetune", "pairtune", "frozen")
ARMS = ("finetune", "pairtune")  # the two arms the paper compares

# Fields a results.json must carry.  ``seed``/``fold`` are checked separately
# because a run may give either one (ESC-50 runs are told apart by fold).
REQUIRED_FIELDS = ("method", "dataset", "backbone", "test_acc")
# A run on multi-label data ("multilabel": true, "metric": "map") is scored by macro mAP: test_map, not test_acc.
MULTILABEL_REQUIRED_FIELDS = ("method", "dataset", "backbone", "test_map")
# The results.json fields of each metric: (the linear probe's, the k-NN probe's); a parsed result keeps these names.
SCORE_FIELDS = {"acc": ("test_acc", "knn_test_acc"), "map": ("test_map", "knn_test_map")}

MISSING_CELL = "–"
DECIMALS = 2

LEGEND = (  # the linear-probe table's (eval.py table's default): it has no k-NN rows, so says nothing of them
    "Test accuracy (%), mean ± sample std (ddof=1) over seeds/folds; "
    "n = number of runs; b = training batch size, shown where cells differ; – = no runs. "
    "Bold: the better mean of FINETUNE vs PAIRTUNE for that backbone and "
    "dataset (no bold on a tie or when one arm is missing)."
)
KNN_LEGEND = (  # --probe knn: k-NN rows only
    "Test accuracy (%) of the k-NN probe on each encoder's features (FINETUNE: its encoder's, before its head), "
    "mean ± sample std (ddof=1) over seeds/folds; n = number of runs; b = training batch size, shown where cells "
    "differ; – = no runs. Bold: the better mean of FINETUNE vs PAIRTUNE for that backbone and dataset (no bold "
    "on a tie or when one arm is missing)."
)
KNN_ROWS = (" k-NN rows: the k-NN probe on the same features (FINETUNE: its encoder's, before its head), "
            "the better arm marked among them.")  # added to LEGEND where a table has both kinds of rows
MAP_MARK = " (mAP)"  # after the name of a multi-label dataset in a table's header
MAP_NOTE = (" Multi-label datasets, marked (mAP), are scored by macro mAP (%): the average precision of each class's "
            "ranking of the test clips, averaged over the classes with at least one positive test clip.")


def legend(summary):
    """The caption that matches the table's rows: LEGEND for linear rows only, KNN_LEGEND for k-NN rows only,
    LEGEND + KNN_ROWS for both; where a dataset is multi-label, it names mAP beside (or instead of) accuracy
    and says how mAP is computed."""
    methods = [method for methods in summary["backbones"].values() for method in methods]
    knn = [method.endswith(KNN_SUFFIX) for method in methods]
    text = KNN_LEGEND if knn and all(knn) else LEGEND + (KNN_ROWS if any(knn) else "")
    metrics = set(summary.get("metrics", {}).values())  # absent for single-label data: the caption as before
    if "map" not in metrics:
        return text
    score = "Test macro mAP (%)" if metrics == {"map"} else "Test accuracy (%) or macro mAP (%)"
    return text.replace("Test accuracy (%)", score, 1) + MAP_NOTE


def dataset_header(summary, dataset):
    """A dataset's name in a table's header: 'fsd50k (mAP)' for a multi-label dataset, the plain name otherwise."""
    return dataset + (MAP_MARK if summary.get("metrics", {}).get(dataset) == "map" else "")


# ----------------------------------------------------------------------------------------------
# Reading results.json files
# ----------------------------------------------------------------------------------------------


def _is_int(value):
    # bool is a subclass of int in Python, but ``"seed": true`` is a mistake.
    return isinstance(value, int) and not isinstance(value, bool)


def _fraction_problem(data, field, required=True):
    """Why data[field] is not a score (a fraction in [0, 1]; where not `required`, it may be absent or null),
    or None when it is one."""
    value = data.get(field)
    # Scores are stored as fractions; a value like 81.2 is almost certainly a percentage written by mistake
    # and would silently wreck the mean.
    if (value is None and not required) or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                            and math.isfinite(value) and 0.0 <= value <= 1.0):
        return None
    return f"{field} must be a fraction in [0, 1], got {value!r}"


def _metric_problem(data):
    """(metric, problem): "acc" for a single-label run, "map" for a multi-label one ("multilabel": true,
    "metric": "map", scored by test_map), and why the file is neither (None where it is one)."""
    multilabel = data.get("multilabel", False)
    if not isinstance(multilabel, bool):
        return None, f"multilabel must be true or false, got {multilabel!r}"
    if not multilabel:
        # A score of the other metric here would be silently ignored, or averaged with accuracies.
        stray = [field for field in ("test_map", "knn_test_map") if data.get(field) is not None]
        stray += [f"metric {data['metric']!r}"] if data.get("metric", "acc") != "acc" else []
        if stray:
            return None, (f"has {', '.join(stray)} but not \"multilabel\": true "
                          "(a multi-label run's results.json says \"multilabel\": true, \"metric\": \"map\")")
        return "acc", None
    if data.get("metric") != "map":
        return None, f"a multi-label result must say \"metric\": \"map\", got {data.get('metric')!r}"
    stray = [field for field in ("test_acc", "knn_test_acc") if data.get(field) is not None]
    if stray:  # which one would the table show? The contract: mAP only.
        return None, f"a multi-label result is scored by test_map, but it also has {', '.join(stray)}"
    return "map", None


def parse_result(data):
    """Check one decoded results.json and return the fields the table needs.

    A single-label run is scored by test_acc (and knn_test_acc); a multi-label one ("multilabel": true,
    "metric": "map") by test_map (and knn_test_map), with no test_acc. The result's "metric" ("acc" or
    "map") says which; its score fields keep their results.json names (SCORE_FIELDS).

    Returns ``(result, None)`` on success or ``(None, problem)`` where
    ``problem`` is a short human-readable reason the file cannot be used.
    """
    if not isinstance(data, dict):
        return None, f"expected a JSON object, got {type(data).__name__}"

    metric, problem = _metric_problem(data)
    if problem is not None:
        return None, problem
    required = REQUIRED_FIELDS if metric == "acc" else MULTILABEL_REQUIRED_FIELDS
    missing = [field for field in required if field not in data]
    if missing:
        return None, "missing required field(s): " + ", ".join(missing)

    method = data["method"]
    if not isinstance(method, str) or method.lower() not in METHOD_ORDER:
        return None, f"unknown method {method!r} (expected one of {', '.join(METHOD_ORDER)})"
    method = method.lower()

    for field in ("dataset", "backbone"):
        if not isinstance(data[field], str) or not data[field].strip():
            return None, f"field {field!r} must be a non-empty string, got {data[field]!r}"

    test_field, knn_field = SCORE_FIELDS[metric]
    problem = _fraction_problem(data, test_field)
    if problem is not None:
        return None, problem

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

    problem = _fraction_problem(data, knn_field, required=False)  # the k-NN probe's (probes.py); absent in older runs
    if problem is not None:
        return None, problem

    knn_score = data.get(knn_field)
    result = {
        "method": method,
        "dataset": data["dataset"],
        "backbone": data["backbone"],
        "backbone_random_init": random_init,
        "seed": seed,
        "fold": fold,
        "metric": metric,
        test_field: float(data[test_field]),
        "valid_" + metric: data.get("valid_" + metric),
        knn_field: None if knn_score is None else float(knn_score),
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


def none_first(value):
    """A sort key putting None (no seed, no fold) before every number."""
    return (value is not None, value if value is not None else 0)


class MixedMetrics(ValueError):
    """Runs of one dataset scored by different metrics (accuracy and mAP): no cell or best-marking can mix them."""


def dataset_metrics(results):
    """{dataset: "acc" | "map"} of parsed results; MixedMetrics, naming a file of each kind, where one dataset
    has both single-label runs (accuracy) and multi-label ones (mAP): e.g. runs made before its manifest gave
    several labels per clip, which are another task and belong in another runs tree."""
    metrics, example = {}, {}
    for r in results:
        metric = r.get("metric", "acc")
        example.setdefault((r["dataset"], metric), r.get("path", "?"))
        if metrics.setdefault(r["dataset"], metric) != metric:
            acc, mean_ap = example.get((r["dataset"], "acc")), example.get((r["dataset"], "map"))
            raise MixedMetrics(f"dataset {r['dataset']!r} has runs scored by accuracy (e.g. {acc}) and multi-label "
                               f"runs scored by mAP (e.g. {mean_ap}); one dataset must have one metric: move "
                               "the runs of the other kind to another runs folder")
    return metrics


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

    A multi-label dataset's cells are its test mAP (a run's test_map): then the summary also has
    ``"metrics": {dataset: "acc" or "map"}`` (absent where every dataset is single-label, so that
    those tables stay as they were), and its runs list test_map. MixedMetrics where one dataset has both.
    """
    metrics = dataset_metrics(results)
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
                runs.sort(key=lambda r: (none_first(r["seed"]), none_first(r["fold"])))
                field = SCORE_FIELDS[metrics[dataset]][0]
                cell = cell_stats([r[field] for r in runs])
                cell["batch_sizes"] = sorted({r.get("train_batch_size") for r in runs} - {None})
                cell["best"] = False
                cell["runs"] = [
                    {"seed": r["seed"], "fold": r["fold"], field: r[field], "path": r["path"]}
                    for r in runs
                ]
                cells[dataset] = cell
            methods[method] = cells
        backbones[label] = methods

    for methods in backbones.values():
        for dataset in datasets:
            _mark_best(methods, dataset)

    summary = {"datasets": datasets, "backbones": backbones}
    if "map" in metrics.values():
        summary["metrics"] = {dataset: metrics[dataset] for dataset in datasets}
    return summary


PROBES = ("linear", "knn", "both")
KNN_SUFFIX = " k-NN"  # a method's row of k-NN probe accuracies, in --probe knn / both tables


def summarise_probe(results, probe="linear"):
    """summarise() of the linear probe's accuracy (FineTune: its own linear head), of the k-NN probe's
    (`knn_test_acc`, a multi-label run's `knn_test_map`; runs without one are left out), or both: each
    method's k-NN row after its linear row, the better arm marked within each probe."""
    dataset_metrics(results)  # MixedMetrics whatever the probe: one of the runs of mixed metrics is a mistake
    scored = lambda r: SCORE_FIELDS[r.get("metric", "acc")]  # (the linear probe's field, the k-NN probe's)
    nearest = [{**r, scored(r)[0]: r[scored(r)[1]]} for r in results if r.get(scored(r)[1]) is not None]
    if probe == "linear":
        return summarise(results)
    renamed = lambda summary: {label: {method + KNN_SUFFIX: cells for method, cells in methods.items()}
                               for label, methods in summary["backbones"].items()}
    metrics = lambda summary: {"metrics": summary["metrics"]} if "metrics" in summary else {}
    if probe == "knn":
        summary = summarise(nearest)
        return {"datasets": summary["datasets"], "backbones": renamed(summary), **metrics(summary)}
    linear, knn_rows = summarise(results), renamed(summarise(nearest)) if nearest else {}
    backbones = {}
    for label, methods in linear["backbones"].items():
        backbones[label] = {}
        for method, cells in methods.items():
            backbones[label][method] = cells
            if method + KNN_SUFFIX in knn_rows.get(label, {}):
                backbones[label][method + KNN_SUFFIX] = knn_rows[label][method + KNN_SUFFIX]
    return {"datasets": linear["datasets"], "backbones": backbones, **metrics(linear)}


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
    header = ["Backbone", "Method"] + [_md_escape(dataset_header(summary, d)) for d in datasets]
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
    lines.append(legend(summary))
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("backbone", "method", "dataset", "n", "mean_pct", "std_pct", "best", "cell")
METRIC_COLUMN = "metric"  # added after CSV_COLUMNS where a dataset is multi-label: each row's "acc" or "map"


def table_rows(summary):
    """One flat record per non-empty cell, in table order (for CSV); where a dataset is multi-label, each
    record also says its cell's metric ("acc" or "map")."""
    metrics = summary.get("metrics")
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
                    **({METRIC_COLUMN: metrics[dataset]} if metrics else {}),
                })
    return rows


def table_csv(summary) -> str:
    """The table as CSV text: table_rows under a header of CSV_COLUMNS (and METRIC_COLUMN where a dataset is
    multi-label)."""
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS + ((METRIC_COLUMN,) if summary.get("metrics") else ()))
    writer.writeheader()
    for row in table_rows(summary):
        # Empty std for n=1 rather than "None", so spreadsheets read it
        # as a blank number.
        row["std_pct"] = "" if row["std_pct"] is None else row["std_pct"]
        writer.writerow(row)
    return handle.getvalue()


def table_json(summary) -> str:
    """The table as JSON text: the legend and the summary, with every run of each cell."""
    payload = {"legend": legend(summary), **summary}
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


TABLE_STEMS = {"linear": "table", "knn": "table-knn", "both": "table-both"}  # one file name per table


def output_paths(runs_dir, out, probe="linear"):
    """Where the table's .md/.csv/.json go: ``--out`` may name a directory (files inside it are called
    table.* for the linear probe, table-knn.* and table-both.* for --probe knn and both, so that one table
    never overwrites another) or a markdown file (siblings share its stem)."""
    stem = TABLE_STEMS[probe]
    if out is None:
        base = Path(runs_dir) / stem
    else:
        out = Path(out)
        if out.is_dir() or out.suffix == "":
            base = out / stem
        elif out.suffix.lower() in (".csv", ".json"):
            # The .csv/.json siblings would overwrite the markdown file.
            raise ValueError(f"--out must be a directory or a markdown file, not {out}")
        else:
            return out, out.with_suffix(".csv"), out.with_suffix(".json")
    return base.with_suffix(".md"), base.with_suffix(".csv"), base.with_suffix(".json")


# ----------------------------------------------------------------------------------------------
# Table 3: the geometry of FINETUNE vs PAIRTUNE test features (eval.py computes the rows)
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
