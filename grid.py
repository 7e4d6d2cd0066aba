"""run_all.sh's questions about its grid, answered from the run folders (rundir.py) and earlier runs' logs.

    # before a long run: jobs done and left, and device-hours left from earlier runs' log.jsonl
    python grid.py plan --search-jobs 12 --logs runs --logs runs-timing < jobs.tsv   # run_all.sh --plan

    # exit status 0 if every run (for PairTune: and its probe) has finished with its results; --print: which
    python grid.py done runs/esc50/wav2vec2/pairtune/fold-1
    python grid.py done --print runs/gtzan/wav2vec2/finetune/seed-0 runs/gtzan/wav2vec2/finetune/seed-1

    # the batch-size search's choice for one dataset x backbone x arm, by valid accuracy
    python grid.py best-batch runs-search/gtzan/wav2vec2/finetune 16 32 64

    # the folder names of datasets or backbones in run paths, one a line (mine, whisper-tiny.en-encoder)
    python grid.py names dataset -- gtzan /data/mine/manifest.csv
    python grid.py names backbone -- wav2vec2 ../shared/models/whisper-tiny.en-encoder

run_all.sh writes the job list and asks these; a person asks `plan` (bash run_all.sh --plan) before
committing device-hours. `done`, `best-batch` and `names` need only the standard library (run_all.sh asks
them often); `plan` reads the datasets' manifests (data.py, which imports torch) to count the clips left.
"""
import argparse
import json
import statistics
import sys
import textwrap
from pathlib import Path

from rundir import (LOG_FILE, RUN_JSON, TRAINING_STAGES, find_runs, print_warning, read_run_json, readable_backbone,
                    readable_dataset, run_is_done)

# ----------------------------------------------------------------------------------------------
# Planning a grid: the jobs left and their device-hours, from earlier runs' logs
# ----------------------------------------------------------------------------------------------

# run_all.sh's job list, `grid.py plan`'s stdin: one job a line, tab-separated, fold empty for seed
# datasets. A pairtune job is pairtune.py, then probe.py on the same out.
JOB_FIELDS = ("number", "out", "dataset", "backbone", "arm", "epochs", "fold")
CENTROID_CLIPS_PER_CLASS = 32  # pairtune.py's --centroid-clips-per-class default, for runs that do not say
# PairTune's selection metric, by pairtune.py's --select-by: epoch-centroid (the default, and what a job without a
# run yet will use) takes its centroids from the epoch's own training pass and encodes only valid, as FineTune's
# classifier does; these encode a train subset of up to --centroid-clips-per-class clips a class as well.
SELECT_BY_DEFAULT = "epoch-centroid"
TRAIN_SUBSET_METRICS = ("centroid", "knn", "probe", "linear")


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
        if job["arm"] not in TRAINING_STAGES:
            raise ValueError(f"job line {number}: arm {job['arm']!r} is not one of {', '.join(TRAINING_STAGES)}")
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
    peak_memory_mb, which runs.throughput logs on CUDA only. The run record names no GPU model."""
    device = str((run.get("args") or {}).get("device", "auto")).split(":")[0]
    if device == "auto":
        device = "cuda" if any("peak_memory_mb" in line for line in lines) else "cpu"
    return device


def speed_logs(dirs, warn=print_warning):
    """Every epoch measured so far: one dict per finetune.py or pairtune.py log.jsonl below `dirs` (missing
    ones skipped) with its run record ("run"), its lines that carry `seconds`, and the device they ran on.
    Unfinished runs count too: their epochs were measured all the same."""
    logs, seen = [], set()
    for root in map(Path, dirs):
        if not root.is_dir():
            continue
        for path in sorted(root.rglob(LOG_FILE)):
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
            if run.get("stage") in TRAINING_STAGES and lines:
                logs.append({"run": run, "lines": lines, "device": measured_device(run, lines)})
    return logs


def centroid_clips_per_class(run) -> int:
    """The size of PairTune's per-class train subset for its valid metric, as the run was given it."""
    return (run.get("args") or {}).get("centroid_clips_per_class") or CENTROID_CLIPS_PER_CLASS


def select_by(run) -> str:
    """A PairTune run's selection metric: its --select-by, or "centroid" for a run from before the flag (the
    only metric then)."""
    return (run.get("args") or {}).get("select_by") or "centroid"


def job_select_by(job) -> str:
    """The selection metric a job's run was started with (select_by), or SELECT_BY_DEFAULT for a job not started."""
    try:
        return select_by(read_run_json(job["out"]))
    except ValueError:
        return SELECT_BY_DEFAULT


def metric_clips(arm, train, valid, classes, per_class=CENTROID_CLIPS_PER_CLASS, select=SELECT_BY_DEFAULT) -> int:
    """Clips the per-epoch valid metric encodes: valid, and for a PairTune run selecting by a metric of
    TRAIN_SUBSET_METRICS also its train subset of up to per_class clips a class, taken as
    min(train, per_class x classes) (exact when every class has at least per_class train clips, or none has)."""
    subset = arm == "pairtune" and select in TRAIN_SUBSET_METRICS
    return valid + (min(train, per_class * classes) if subset else 0)


def planned_clips(manifest, fold) -> dict:
    """{"train", "valid", "classes"}: what a job will train and select on, from its manifest's rows alone (no
    audio is read): load_splits's rule, valid carved from train where the manifest has none."""
    import data  # imports torch
    clips = data.read_manifest(manifest)
    if fold is None:
        train, valid = [c for c in clips if c.split == "train"], [c for c in clips if c.split == "valid"]
        test = [c for c in clips if c.split == "test"]
    else:  # the job's fold is test, the other folds train
        train, valid, test = [c for c in clips if c.fold != fold], [], [c for c in clips if c.fold == fold]
    if not valid:  # the default --valid-fraction, by whole speakers where load_splits would take them
        train, valid = data.carve_valid(train, data.VALID_FRACTION, data.valid_grouping(train, test)[0])
    return {"train": len(train), "valid": len(valid), "classes": len({label for c in train for label in c.labels})}


def scaled_rates(logs):
    """(training clips per second, the valid metric's seconds per clip, assumed), medians over the logs'
    epochs. Logs without valid_seconds (older ones) give the metric a third of a training step's time per clip
    (forward only, no backward: assumed); logs without clips_per_s time the training pass as the epoch less
    the metric."""
    rates, per_clip, assumed = [], [], False
    for log in logs:
        run = log["run"]
        train, valid = run["clips"]["train"], run["clips"]["valid"]
        metric = max(1, metric_clips(run["stage"], train, valid, len(run["classes"]), centroid_clips_per_class(run),
                                     select_by(run)))
        for line in log["lines"]:
            seconds, valid_seconds, rate = line["seconds"], line.get("valid_seconds"), line.get("clips_per_s")
            if rate is None:
                rate = (train / max(seconds - valid_seconds, 1e-3) if valid_seconds is not None
                        else (train + metric / 3) / seconds)
            assumed = assumed or valid_seconds is None
            rates.append(rate)
            per_clip.append(valid_seconds / metric if valid_seconds is not None else 1 / (3 * rate))
    return float(statistics.median(rates)), float(statistics.median(per_clip)), assumed


def estimate_cell(jobs, logs, data_root=None) -> dict:
    """Seconds per epoch of each of one cell's jobs ("seconds"; None: unmeasured, "problem" says why) and
    their source, best first: (a) logs of the same dataset, backbone and arm: their median epoch; (b) logs of
    the same backbone and arm on another dataset (the one with the most epochs logged), scaled by clips: the
    job's train clips / clips_per_s plus its valid metric's clips x seconds per clip (scaled_rates; the metric
    the job's run was started with, else SELECT_BY_DEFAULT); (c) no log: unmeasured. A log's backbone is the
    one its run record names (backbone.display_name of the --backbone given), or the --backbone string
    itself, for a local path that has moved."""
    import data  # imports torch
    dataset, name, arm = jobs[0]["cell"]
    ours = [log for log in logs if log["run"]["stage"] == arm and (
        log["run"].get("backbone") == name or (log["run"].get("args") or {}).get("backbone") == jobs[0]["backbone"])]
    same = [log for log in ours if log["run"].get("dataset") == dataset]
    if same:
        seconds = float(statistics.median([line["seconds"] for log in same for line in log["lines"]]))
        return {"seconds": [seconds] * len(jobs), "source": "same cell", "logs": same, "assumed": False}
    by_dataset = {}  # logs that can be scaled: their run record counts the clips
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
    seconds = [clips[job["fold"]]["train"] / rate
               + metric_clips(arm, **clips[job["fold"]], per_class=per_class, select=job_select_by(job)) * per_clip
               for job in jobs]
    return {"seconds": seconds, "source": f"scaled from {source}", "logs": by_dataset[source], "assumed": assumed}


def timing_command(job, timing_dir, data_root=None) -> str:
    """One epoch of a cell's first job, into timing_dir (the last --logs), where the next plan finds its log."""
    import shlex
    arm = job["arm"]
    words = [f"{arm}.py", "--dataset", job["dataset"], "--backbone", job["backbone"], "--epochs", "1"]
    words += ["--fold", str(job["fold"])] if job["fold"] is not None else []
    words += ["--data-root", data_root] if data_root else []
    # run_all.sh's folder names (cmd_names), under timing_dir
    out = Path(timing_dir, readable_dataset(job["dataset"]), readable_backbone(job["backbone"]), arm)
    words += ["--out", str(out)]
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
    import backbone  # a run record names a backbone by backbone.display_name
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
        f"cut short counts in full), on the device the logs ran on ({RUN_JSON}'s --device; no GPU model is "
        "recorded): another device, batch size or crop takes other hours.")
    if scaled:
        say("scaled: train clips / median clips_per_s + the valid metric's clips (valid; a PairTune run selecting "
            f"by {', '.join(TRAIN_SUBSET_METRICS)} also up to {CENTROID_CLIPS_PER_CLASS} train clips a class) x its "
            "median seconds per clip, taking clips of about the same length.")
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
# Done runs and the batch-size search's choice
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
    (SEARCH_DIR/batch-B/<first seed or fold>/) has the best valid accuracy, or valid mAP on multi-label data
    (FineTune: its classifier at the selected epoch; PairTune: its probe's), never test; ties go to the smaller
    batch. Prints the batch size; exit 1, naming what is missing, until every searched batch size has finished."""
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
        results = json.loads(finished[0]["results"].read_text(encoding="utf-8"))
        valid[batch] = results["valid_map"] if results.get("multilabel") else results["valid_acc"]  # mAP: multi-label
    if missing:
        print(f"error: the batch-size search has not finished: no results in {', '.join(missing)} "
              f"(run the search's jobs first: bash run_all.sh --count search)", file=sys.stderr)
        return 1
    best = max(sorted(valid), key=lambda batch: valid[batch])  # max keeps the first (smallest) of ties
    print(best)
    return 0


# ----------------------------------------------------------------------------------------------
# Run folder names
# ----------------------------------------------------------------------------------------------

# The names' rules, by what is named; each a name no two of a grid's datasets (or backbones) may share.
READABLE = {"dataset": readable_dataset, "backbone": readable_backbone}


def cmd_names(args):
    """Each dataset's (or backbone's) name in run folder paths (rundir's rule, as a run without --out names
    its folder), one a line in the order given: run_all.sh builds every path of its grid from these. Exit 2,
    one line, where a value has no usable name, or two different values would share one (their runs would
    land in each other's folders)."""
    named = {}  # folder name -> the first value with it
    for value in args.values:
        name = READABLE[args.kind](value)
        if name in ("", ".", "..") or not name.isprintable():  # run_all.sh reads one name a line
            print(f"error: {args.kind} {value!r}: no name for its run folders in it", file=sys.stderr)
            return 2
        first = named.setdefault(name, value)
        if first != value:
            print(f"error: {args.kind}s {first!r} and {value!r} would share run folders (both named {name!r}): "
                  "list one of them (rename a manifest or folder), or run the other under another RUNS",
                  file=sys.stderr)
            return 2
    print("\n".join(READABLE[args.kind](value) for value in args.values))
    return 0


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        description="run_all.sh's questions about its grid: which runs are done, the batch-size search's choice, "
                    "and the device-hours left.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + __doc__.split("\n\n", 1)[1].split("run_all.sh writes", 1)[0],
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    names = subcommands.add_parser(
        "names", help="datasets' or backbones' names in run folder paths, one a line (for run_all.sh)")
    names.add_argument("kind", choices=sorted(READABLE), help="what the values are")
    names.add_argument("values", metavar="VALUE", nargs="+",
                       help="--dataset or --backbone values as given (put -- before them: one may start with -)")
    names.set_defaults(func=cmd_names)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
