"""Summarise finished runs into the paper's results table.

Every training run writes a ``results.json`` into its own run directory.  This
script gathers those files and turns them into one table: one row per
backbone x method, one column per dataset, each cell the test accuracy as
mean ± sample standard deviation over seeds (or ESC-50 folds).

Examples::

    # print the table and write runs/table.md, runs/table.csv, runs/table.json
    python eval.py table runs/

    # write the three files somewhere else (a directory, or a .md file whose
    # .csv and .json siblings get the same stem)
    python eval.py table runs/ --out reports/
    python eval.py table runs/ --out reports/main_table.md

    # anisotropy and dimensionality contribution (Table 3) of test features
    python eval.py isotropy --features finetune.npy pairtune.npy
    python eval.py dimcontrib --ckpt runs/gtzan/wav2vec2/pairtune/seed-0 --json dc.json

The script uses only the standard library and numpy so it runs anywhere the
results were copied to, without the training stack (``--ckpt`` alone imports
torch, to read probe.py's feature cache).  Each subcommand is a
``cmd_<name>(args) -> exit code`` function registered in ``build_parser``
(isotropy and dimcontrib share ``cmd_geometry``); new analyses are added there.
"""

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

# Row order inside one backbone.  FINETUNE and PAIRTUNE are the two arms the
# paper compares, so they always get a row (showing "–" where runs are
# missing); FROZEN is an optional baseline and only shown when it was run.
METHOD_ORDER = ("finetune", "pairtune", "frozen")
ALWAYS_SHOWN_METHODS = ("finetune", "pairtune")
COMPARED_METHODS = ("finetune", "pairtune")

# Fields a results.json must carry.  ``seed``/``fold`` are checked separately
# because a run may give either one (ESC-50 runs are told apart by fold).
REQUIRED_FIELDS = ("method", "dataset", "backbone", "test_acc")

MISSING_CELL = "–"
RANDOM_INIT_SUFFIX = " (random init)"
DECIMALS = 2

LEGEND = (
    "Test accuracy (%), mean ± sample std (ddof=1) over seeds/folds; "
    "n = number of runs; – = no runs. "
    "Bold: the better mean of FINETUNE vs PAIRTUNE for that backbone and "
    "dataset (no bold on a tie or when one arm is missing)."
)


def print_warning(message):
    """Report a problem with one input file without stopping the whole table."""
    print(f"warning: {message}", file=sys.stderr)


# --------------------------------------------------------------------------
# Reading results.json files
# --------------------------------------------------------------------------


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

    result = {
        "method": method,
        "dataset": data["dataset"],
        "backbone": data["backbone"],
        "backbone_random_init": random_init,
        "seed": seed,
        "fold": fold,
        "test_acc": float(test_acc),
        "valid_acc": data.get("valid_acc"),
    }
    return result, None


def run_key(result):
    """The identity of a run: two files with the same key describe one run."""
    return (
        result["dataset"],
        result["backbone"],
        result["backbone_random_init"],
        result["method"],
        result["seed"],
        result["fold"],
    )


def collect_results(runs_dir, warn=print_warning):
    """Load every usable ``results.json`` below ``runs_dir`` (any depth).

    Files that are not valid JSON or lack required fields are skipped with a
    warning; so is the second of two files describing the same run.  Each
    returned dict carries the parsed fields plus ``path`` (the file it came
    from).  Files are visited in sorted path order so that which duplicate is
    kept does not depend on the file system.
    """
    runs_dir = Path(runs_dir)
    results = []
    seen = {}  # run key -> path of the file kept for it
    for path in sorted(runs_dir.rglob("results.json")):
        if not path.is_file():
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

        key = run_key(result)
        if key in seen:
            warn(
                f"duplicate run (dataset={key[0]}, backbone={key[1]}, "
                f"random_init={key[2]}, method={key[3]}, seed={key[4]}, fold={key[5]}) "
                f"in {seen[key]} and {path}; keeping {seen[key]}"
            )
            continue
        seen[key] = path
        result["path"] = str(path)
        results.append(result)
    return results


# --------------------------------------------------------------------------
# Aggregating runs into table cells
# --------------------------------------------------------------------------


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
            if method not in ALWAYS_SHOWN_METHODS and method not in present_methods:
                continue
            cells = {}
            for dataset in datasets:
                runs = [r for r in own if r["method"] == method and r["dataset"] == dataset]
                if not runs:
                    continue
                # List runs by seed then fold (None first) so the JSON is stable.
                runs.sort(key=lambda r: (_none_first(r["seed"]), _none_first(r["fold"])))
                cell = cell_stats([r["test_acc"] for r in runs])
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


def _mark_best(methods, dataset):
    """Flag the better of the compared arms for one (backbone, dataset)."""
    cells = [methods.get(m, {}).get(dataset) for m in COMPARED_METHODS]
    if any(cell is None for cell in cells):
        return
    # Compare at the printed precision: two means that print identically are
    # a tie to the reader, so neither should be bold.
    means = [round(cell["mean"], DECIMALS) for cell in cells]
    if means[0] == means[1]:
        return
    cells[int(np.argmax(means))]["best"] = True


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


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
    for label, methods in summary["backbones"].items():
        for method, cells in methods.items():
            row = [_md_escape(label), method.upper()]
            for dataset in datasets:
                cell = cells.get(dataset)
                text = format_cell(cell)
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


def write_csv(summary, path):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in table_rows(summary):
            # Empty std for n=1 rather than "None", so spreadsheets read it
            # as a blank number.
            row["std_pct"] = "" if row["std_pct"] is None else row["std_pct"]
            writer.writerow(row)


def write_json(summary, path):
    payload = {"legend": LEGEND, **summary}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


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


# --------------------------------------------------------------------------
# Geometry of the representations (paper, section 3.4): anisotropy and the
# dimensionality contribution to cosine similarity
# --------------------------------------------------------------------------


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
    signed = cc[order[:3]] / total if total != 0 else np.full(min(3, len(cc)), np.nan)
    return {
        "anisotropy": float(total),
        "top1": float(cumulative[0]), "top2": float(cumulative[min(1, len(cc) - 1)]),
        "top3": float(cumulative[min(2, len(cc) - 1)]),
        "dims50": dims_for(0.5), "dims80": dims_for(0.8), "dims90": dims_for(0.9),
        "top_dimensions": [int(i) for i in order[:3]],
        "signed_top1": float(signed[0]), "signed_top3": float(np.sum(signed[:3])),
        "dimensions": int(len(cc)),
    }


def load_features(spec):
    """A [N, d] array from a .npy file, or the test features probe.py cached in a pairtune run."""
    path = Path(spec)
    if path.suffix == ".npy":
        return np.load(path)
    cached = sorted(path.glob("features/*/test.pt"))
    if not cached:
        raise ValueError(f"{path}: no cached test features (features/<dataset>/test.pt). Run "
                         f"`python probe.py --ckpt {path}` first, which caches them, or pass --features X.npy.")
    import torch  # only this path needs it: the cache is a torch file

    return torch.load(cached[0], weights_only=False)["features"].double().numpy()


def cmd_geometry(args):
    names = list(args.ckpt or []) + list(args.features or [])
    if not names:
        print("error: give --ckpt RUN or --features X.npy (one or more)", file=sys.stderr)
        return 1
    rows = {}
    for name in names:
        try:
            rows[name] = dimension_contribution(load_features(name))
        except (OSError, ValueError) as error:
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
            print(f"| {name} | {r['top1']:.3f} | {r['top2']:.3f} | {r['top3']:.3f} | {r['dims50']} | "
                  f"{r['dims80']} | {r['dims90']} | {r['signed_top1']:.3f} | {r['signed_top3']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


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

    results = collect_results(runs_dir)
    if not results:
        print(f"error: no usable results.json files found under {runs_dir}", file=sys.stderr)
        return 1

    summary = summarise(results)
    table = format_table(summary)
    print(table, end="")

    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(table, encoding="utf-8")
    write_csv(summary, csv_path)
    write_json(summary, json_path)
    # Status goes to stderr so stdout stays pure markdown for piping.
    print(f"wrote {md_path}, {csv_path}, {json_path} ({len(results)} runs)", file=sys.stderr)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        description="Evaluate and summarise AudioConFit runs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1].split("The script", 1)[0],
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
    table.set_defaults(func=cmd_table)

    for name, text in (("isotropy", "anisotropy: mean cosine similarity over pairs of distinct test clips"),
                       ("dimcontrib", "dimensionality contribution to cosine similarity (Table 3)")):
        geometry = subcommands.add_parser(name, help=text)
        geometry.add_argument("--ckpt", nargs="+", metavar="RUN",
                              help="pairtune run folders whose probe.py feature cache holds test features")
        geometry.add_argument("--features", nargs="+", metavar="X.npy", help="[N, d] feature matrices")
        geometry.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")
        geometry.set_defaults(func=cmd_geometry)

    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
