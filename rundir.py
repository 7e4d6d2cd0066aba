"""The one reader of a run folder: its layout, its run.json, its results and its log.

Every stage script writes one folder, a run, and marks its run.json finished only once its results
are on disk (runs.py writes the files; outdir.py decides what a script may write over):

    RUN/run.json                  stage, arguments, data, backbone, provenance; "finished" at the end
    RUN/log.jsonl                 training runs: a JSON line an epoch (train_loss, the valid accuracy
                                  the run selects its epoch by, seconds)
    RUN/checkpoint.pt             weights, optimiser, random states: while a training run is unfinished
    RUN/best-e<epoch>.pt          the best-valid weights so far (the same)
    RUN/encoder/                  the selected epoch's encoder (PairTune: encoder-last/ too, the last)
    RUN/head.pt                   FineTune's classifier, or a probe's
    RUN/results.json              test accuracy, confusion, ... (FineTune and probe.py runs)
    RUN/features/<dataset>[-fold<k>]/<split>.pt   pooled features cached for probes and analyses
    RUN/probe/                    a PairTune run's own probe (probe.py's default --out): a run of its
                                  own, stage "probe", whose results.json are the PairTune run's

An export.py folder is not a run: it holds EXPORT_INFO instead. Every other file of the project
that needs a name of this layout, or reads one of these files, takes it from here. Standard library
only: eval.py's tables and grid.py read runs without loading torch.
"""
import json
import math
import sys
from pathlib import Path

RUN_JSON = "run.json"
LOG_FILE = "log.jsonl"
CHECKPOINT = "checkpoint.pt"
BEST_FILE = "best-e{epoch}.pt"  # .format(epoch=N); the checkpoint names the one it means
BEST_GLOB = BEST_FILE.format(epoch="*")
ENCODER = "encoder"
ENCODER_LAST = "encoder-last"
HEAD = "head.pt"
RESULTS = "results.json"
FEATURES = "features"
PROBE_DIR = "probe"
EXPORT_INFO = "audioconfit.json"  # what export.py adds to a transformers folder: chunk length, provenance

TRAINING_STAGES = ("finetune", "pairtune")
# Where each stage's test results are: probe.py writes a PairTune run's stage 2 to RUN/probe/ as a run of its
# own; a probe of a frozen backbone, or a side experiment (other settings than its run's), to its own --out.
RESULTS_FILE = {"finetune": RESULTS, "pairtune": f"{PROBE_DIR}/{RESULTS}", "probe": RESULTS}
RANDOM_INIT_SUFFIX = " (random init)"  # how a backbone label flags random weights (smoke tests)

# The fields of run.json that finding and grouping runs read, and their JSON types where present.
RUN_FIELDS = {"stage": str, "method": str, "dataset": str, "backbone": str, "args": dict}


# Where a run goes when no --out is given: the layout run_all.sh uses for its grid, so that a run by
# hand and the grid's job for the same cell are one folder, and two arms, datasets, backbones or seeds
# never share one.
RUNS_ROOT = "runs"


def readable_dataset(dataset: str) -> str:
    """A dataset's name in a run folder's path: 'gtzan' for 'gtzan', 'data/gtzan' or
    'data/gtzan/manifest.csv'; 'mine' for '/any/where/mine.csv'."""
    path = Path(dataset)
    if path.suffix.lower() == ".csv":
        return path.parent.resolve().name if path.stem == "manifest" else path.stem
    return path.name if path.name not in ("", ".", "..") else path.resolve().name


def readable_backbone(backbone: str) -> str:
    """A backbone's name in a run folder's path: an alias as it is ('wav2vec2'), a local folder by its
    own name ('whisper-tiny.en-encoder' for '../shared/models/whisper-tiny.en-encoder'), a hub id with
    '/' as '_' ('facebook_wav2vec2-base', one path component)."""
    path = Path(backbone)
    if path.is_dir():
        return path.resolve().name
    return backbone.replace("/", "_")


def default_run_dir(method: str, dataset: str, backbone: str, seed: int, fold=None, shots=None,
                    root: str = RUNS_ROOT) -> Path:
    """runs/<dataset>/<backbone>/<method>/[shots-K/]<seed-N | fold-K>: run_all.sh's folder for the same
    run (a fold run is fold-K whatever its seed, as run_all.sh runs folds with seed 0)."""
    repeat = f"fold-{fold}" if fold is not None else f"seed-{seed}"
    shot_dir = f"shots-{shots}" if shots is not None else ""
    return Path(root, readable_dataset(dataset), readable_backbone(backbone), method, shot_dir, repeat)


def print_warning(message):
    """Report a problem with one input file without stopping the whole table."""
    print(f"warning: {message}", file=sys.stderr)


def best_file_name(epoch: int) -> str:
    return BEST_FILE.format(epoch=epoch)


def feature_dir(run_dir, dataset: str, fold) -> Path:
    """Where a run keeps its cached features: RUN/features/<dataset>[-fold<k>]/<split>.pt."""
    return Path(run_dir) / FEATURES / (dataset if fold is None else f"{dataset}-fold{fold}")


# ----------------------------------------------------------------------------------------------
# run.json
# ----------------------------------------------------------------------------------------------

class RunRecordError(ValueError):
    """A run.json that is missing, cannot be read, or is not a run record. `path`: the file; `cause`: the
    error that stopped reading it, else `problem`: why what was read is no record. The message is the one a
    report prints; outdir.read_run_json words its own for a folder a script is about to write into."""

    def __init__(self, message, path, cause=None, problem=None):
        super().__init__(message)
        self.path, self.cause, self.problem = path, cause, problem


def read_run_json(folder) -> dict:
    """FOLDER/run.json decoded; RunRecordError naming the file where it is missing, not a JSON object, or
    gives one of RUN_FIELDS another type: no record the scripts write, and one that would stop a report later."""
    path = Path(folder) / RUN_JSON
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise RunRecordError(f"{folder}: not a run folder (no {RUN_JSON})", path, error) from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:  # "[[[[..." recurses
        raise RunRecordError(f"{path}: not valid JSON ({error})", path, error) from None
    if not isinstance(run, dict):
        problem = f"expected a JSON object, got {type(run).__name__}"
        raise RunRecordError(f"{path}: {problem}", path, problem=problem)
    for field, kind in RUN_FIELDS.items():
        if run.get(field) is not None and not isinstance(run[field], kind):
            problem = f"{field!r} is {type(run[field]).__name__}, not {'an object' if kind is dict else 'a string'}"
            raise RunRecordError(f"{path}: not a run record ({problem})", path, problem=problem)
    return run


def read_finished(folder, results: bool = True) -> dict:
    """A folder's run.json, if the run is finished (and, with results, has written its results.json);
    ValueError otherwise, saying how to finish it."""
    run = read_run_json(folder)
    if not run.get("finished") or (results and not (Path(folder) / RESULTS).is_file()):
        raise ValueError(f"{folder}: the {run.get('stage')} run is not finished (rerun its command; the training "
                         "scripts continue with --resume)")
    return run


def is_runs_own_probe(probe_dir) -> bool:
    """RUN/probe/ beside RUN/run.json: the run's stage 2. probe.py refuses to write a probe with other
    settings than its run's there, so any other probe of a run is a side experiment."""
    probe_dir = Path(probe_dir)
    return probe_dir.name == PROBE_DIR and (probe_dir.parent / RUN_JSON).is_file()


# ----------------------------------------------------------------------------------------------
# Results: which runs are done, and where their results.json is
# ----------------------------------------------------------------------------------------------

def results_file(run_dir, run):
    """A finished run's results.json (RESULTS_FILE), or None while there is none: the run has not
    finished, or a PairTune run's probe has not (probe.py marks RUN/probe/run.json finished after
    writing its results.json, as the training scripts do)."""
    stage = run.get("stage")
    if stage not in RESULTS_FILE or not run.get("finished"):
        return None
    if stage == "pairtune":
        try:
            if not read_run_json(Path(run_dir) / PROBE_DIR).get("finished"):
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


def find_runs(runs_dir, stages=TRAINING_STAGES, warn=print_warning, few_shot=False):
    """Finished runs below runs_dir (any depth) whose stage is in `stages`, one dict per run.json: the
    one place where eval.py, grid.py and run_all.sh learn which runs exist. Few-shot runs (--shots K) are
    another experiment: only with few_shot=True (`eval.py curves --shots`), and then only they.

    Each dict: dir, stage, method (the stage; a probe's: "pairtune" or "frozen"), dataset, backbone
    (label, random init flagged), seed, fold, run (the decoded run.json), results (results_file: None
    for a PairTune run not yet probed). Unfinished runs are skipped with a warning. Two folders holding
    the same run (stage, method, dataset, backbone, seed, fold), e.g. a copy, count once: a run's own
    results before a side probe's, then the first in path order, so which is kept does not depend on
    the file system.
    """
    found_runs, other_experiment = [], 0
    for path in sorted(Path(runs_dir).rglob(RUN_JSON)):
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
# log.jsonl
# ----------------------------------------------------------------------------------------------

# A line's valid accuracy: FineTune's classifier's is `valid_acc` ("valid_metric": "classifier"); PairTune logs
# its selection metric's as `valid_metric_acc` ("valid_metric": its --select-by), and did as `valid_acc` before.
# On multi-label data the valid metric is macro mAP, logged as `valid_map` and `valid_metric_map`.
VALID_ACCURACY = ("valid_acc", "valid_metric_acc", "valid_map", "valid_metric_map")
CURVE_FIELDS = ("epoch", VALID_ACCURACY)  # what a log line needs to be a point of Figure 2


def _present(line, need):
    """The field of `need` (a name, or a tuple of names taken in turn) that `line` has, else KeyError."""
    for name in (need,) if isinstance(need, str) else need:
        if name in line:
            return name
    raise KeyError(need)


def read_log_lines(run_dir, warn=print_warning, needs=()):
    """The JSON objects of a run's log.jsonl that hold the fields `needs` as numbers (an entry may be a tuple
    of names: the first the line has). A damaged line (cut short, bytes that are not text, not an object, a
    field missing or not a number) is left out with one warning per file naming its line numbers: one bad
    log must not stop a report."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        raise ValueError(f"{path}: missing (every finetune.py or pairtune.py run writes one)")
    lines, damaged = [], []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw.decode("utf-8"))
            if all(isinstance(value, (int, float)) and math.isfinite(value)
                   for value in (line[_present(line, need)] for need in needs)):
                lines.append(line)
                continue
        except (UnicodeDecodeError, ValueError, RecursionError, TypeError, KeyError):  # TypeError: not an object
            pass
        damaged.append(number)
    if damaged:
        shown = ", ".join(map(str, damaged[:5])) + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
        named = [need if isinstance(need, str) else " or ".join(need) for need in needs]
        warn(f"skipping line{'s' if len(damaged) > 1 else ''} {shown} of {path}: not a JSON object"
             + (f" with {' and '.join(named)}" if needs else "") + " (damaged, or cut short by a kill)")
    return lines


def valid_accuracy(line) -> float:
    """A log line's valid accuracy (VALID_ACCURACY: valid_acc where the line has it, else valid_metric_acc), or
    on multi-label data its valid mAP."""
    return float(line[_present(line, VALID_ACCURACY)])


def epoch_accuracies(lines):
    """{epoch: valid accuracy} of log lines. An epoch logged twice (a run killed between its log line and its
    checkpoint, then resumed) keeps its last line: the one the run went on from."""
    return {int(line["epoch"]): valid_accuracy(line) for line in lines}


def read_log(run_dir, warn=print_warning):
    """{epoch: valid accuracy} from a run's log.jsonl."""
    return epoch_accuracies(read_log_lines(run_dir, warn, needs=CURVE_FIELDS))


def valid_metric(lines, default: str) -> str:
    """What a run's valid accuracy measures, as its log.jsonl lines name it: "classifier" (FineTune's head) or
    PairTune's --select-by metric on encoder features; `default` for logs written before the field existed."""
    return lines[-1].get("valid_metric", default) if lines else default
