#!/usr/bin/env bash
# The full AudioConFit comparison: datasets x backbones x seeds (fold datasets: folds) x
# {finetune, pairtune + probe}, ending with the results table and the analysis in RUNS/report/.
#
#   bash run_all.sh                 # the paper's grid, one job after another (prepare the datasets first)
#   bash run_all.sh --quick         # demo data + tiny random backbone, a few minutes on 2 CPU cores
#   bash run_all.sh --parallel 4    # 4 jobs at once, one GPU each (no GPU: the CPU threads shared out)
#   bash run_all.sh --list          # the jobs not yet done, one runnable command a line
#   bash run_all.sh --job 17        # job 17 of the full list (under Slurm: SLURM_ARRAY_TASK_ID)
#   bash run_all.sh --plan          # how many jobs, and an estimate of the GPU-hours they need
#   bash run_all.sh --report        # the table and report from the runs that finished
#   DATASETS="gtzan emodb" BACKBONES=wav2vec2 SEEDS="0 1 2" EPOCHS=20 bash run_all.sh
#   DATASETS=fsd50k bash run_all.sh # multi-label (prepare.py fsd50k): its own valid split (dev's val),
#                                   # BCE / Jaccard-weighted SupCon, scored by macro mAP in the table
#
# Environment: DATASETS, BACKBONES, SEEDS, EPOCHS, FOLDS (for fold datasets), FOLD_DATASETS
# (datasets run over FOLDS instead of SEEDS; default esc50), RUNS (output root, default runs),
# CONFIT_DATA (data root, default data), PYTHON, EXTRA_ARGS (passed to pairtune.py and finetune.py),
# BATCH_SIZES (e.g. "32 64 128": the paper's batch-size search, below), SEARCH_RUNS (its runs,
# default RUNS-search), SHOTS (e.g. "1 2 4 8 16": few-shot learning curves, below), PROBE_ARGS (passed
# to the frozen encoder's probes of SHOTS). Relative paths are relative to this script's folder, where it runs.
# Needs Linux (flock, /proc) and bash 4.2 or newer.
#
# A job is one finetune run, or one pairtune run and its probe. Jobs are numbered from 0 in a stable order
# (the loops below), done or not; a job's lines say "== job N/TOTAL". Results go to
# RUNS/<dataset>/<backbone>/<method>/<seed-N|fold-N>/, the folder a run of the same cell without --out uses
# (rundir.default_run_dir): a dataset named by its manifest's folder or file ('mine' for /data/mine/manifest.csv),
# a local backbone by its folder, a hub id with '/' as '_'; two datasets (or backbones) of one name are refused.
# A job whose results exist is skipped, an interrupted one resumes from its checkpoint, a failed one
# leaves job.log and job.rc in its folder and the grid goes on. A lock file in the run folder (host,
# process id and start time, Slurm job id) keeps two runners (a retry, two array tasks) off the same job
# at once; the lock of a runner that is gone (its process on this host, or its Slurm job) is taken over.
# A job left undone because another runner holds it is a failure of this runner too (exit status 1).
# Values from the environment are checked (numbers are numbers) or quoted: none is ever run as shell.
#
# Few-shot curves (SHOTS set): every job runs once per K in SHOTS with --shots K (K train clips per class,
# drawn with the seed; valid and test whole), into RUNS/<dataset>/<backbone>/<method>/shots-K/<repeat>/,
# and a third arm, the frozen pre-trained encoder's probe, runs beside the two; `python eval.py curves
# --shots RUNS` draws accuracy against K.
#
# Batch-size search (BATCH_SIZES set): first each arm runs at each batch size on the first seed or
# fold, into SEARCH_RUNS/<dataset>/<backbone>/<arm>/batch-B/ (not RUNS, so they are not counted as
# repeats); then every seed or fold of the grid runs at the batch size whose valid accuracy was best
# for that dataset, backbone and arm (test is never read for it). Those jobs come first in the list.
set -uo pipefail  # not -e: one failed job must not stop the grid
set -f  # no globbing: a word of a value from the environment (EXTRA_ARGS='*') is never a file name pattern
cd "$(dirname "$0")"
# This runner's own state, never read from the environment: bash's arithmetic would run a command
# substitution in a value found there (GRID_NOT_RUN='PWD[$(cmd)]').
GRID_NOT_RUN=0 SEARCH_JOBS=0 LOCKED_ELSEWHERE=0 LOCK_HOLDER= LOCK_LINE= SLOT_FD= ALIVE_FD= LAST_LINE=
LOCKED_BY=()  # job number -> the holder of the lock that kept this runner from it

usage="usage: bash run_all.sh [--quick] [--list | --job N | --parallel K | --plan | --report | --count [search]]"
QUICK=0 MODE=sequential JOB= PARALLEL=1 COUNT_WHAT=all QUICK_FLAG=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) QUICK=1 QUICK_FLAG=(--quick);;
    --list|--plan|--report) MODE=${1#--};;
    --count) MODE=count; if [[ ${2:-} == search ]]; then COUNT_WHAT=search; shift; fi;;
    --job) MODE=job; JOB=${2:-}; shift;;
    --parallel) MODE=parallel; PARALLEL=${2:-}; shift;;
    --parallel-worker) MODE=parallel_worker; JOB=${2:-}; shift;;  # one job of --parallel (used by xargs)
    *) echo "$usage" >&2; exit 2;;
  esac
  shift
done
if [[ $MODE == sequential && -n ${SLURM_ARRAY_TASK_ID:-} ]]; then MODE=job JOB=$SLURM_ARRAY_TASK_ID; fi
if [[ $MODE == job || $MODE == parallel_worker ]] && [[ ! $JOB =~ ^[0-9]+$ ]]; then
  echo "error: --job needs a job number (0, 1, ...)" >&2; exit 2
fi
[[ $MODE == job || $MODE == parallel_worker ]] && JOB=$(( 10#$JOB ))  # 010 is job 10, not octal
if [[ $MODE == parallel && ! $PARALLEL =~ ^[1-9][0-9]*$ ]]; then
  echo "error: --parallel needs a number of jobs at once (1, 2, ...)" >&2; exit 2
fi

PYTHON=${PYTHON:-python}
export CONFIT_DATA=${CONFIT_DATA:-data}
export PYTHONUNBUFFERED=1  # keep script output in order when piped to a log
if (( QUICK )); then
  DATASETS=${DATASETS:-demo}
  BACKBONES=${BACKBONES:-tiny}
  SEEDS=${SEEDS:-"0 1 2"}
  EPOCHS=${EPOCHS:-4}
  RUNS=${RUNS:-runs-quick}
  # A randomly initialised 32-wide model learns nothing in a few epochs at the paper's 5e-5; both
  # arms get the same larger rate, batch and crop.
  EXTRA_ARGS=${EXTRA_ARGS:-"--lr 1e-3 --max-seconds 2 --batch-size 32"}
else
  DATASETS=${DATASETS:-"timit esc50 gtzan mswc-s mswc-i emodb"}
  BACKBONES=${BACKBONES:-"wav2vec2 hubert wavlm"}
  SEEDS=${SEEDS:-"0 1 2 3 4"}
  EPOCHS=${EPOCHS:-40}
  RUNS=${RUNS:-runs}
  EXTRA_ARGS=${EXTRA_ARGS:-}
fi
FOLDS=${FOLDS:-"1 2 3 4 5"}
FOLD_DATASETS=${FOLD_DATASETS:-esc50}
BATCH_SIZES=${BATCH_SIZES:-}
SHOTS=${SHOTS:-}
PROBE_ARGS=${PROBE_ARGS:-}
RUNS=${RUNS%/}  # runs/ would put runs/-search inside RUNS, where the table would count its runs
SEARCH_RUNS=${SEARCH_RUNS:-$RUNS-search}
SEARCH_RUNS=${SEARCH_RUNS%/}

# ---------------- the environment's values: numbers checked, word lists split without globs ----------------
# Every value that reaches a job's command line is checked here, and quoted (printf %q) where the line is
# built: no shell metacharacter in it is ever run, by this script or by whoever runs a --list line.
shown() {  # a value on one line, for a message: newlines as \n, other control characters as ?
  local text=${1//$'\n'/\\n}
  echo "${text//[[:cntrl:]]/?}"
}
bad_value() {  # variable name, what its value is not: one line, and stop
  echo "error: $1: '$(shown "${!1}")' is not $2" >&2
  exit 2
}
words_of() {  # variable name, array name: the value split at blanks (no globs; quotes, $ and ` stay as they are)
  read -r -d '' -a "$2" <<< "${!1}"
  return 0  # read's status is 1 at the end of its input
}
list_of() {  # variable name, array name, pattern of each word, what the list must be
  local -a words
  local word
  words_of "$1" words
  for word in ${words[@]+"${words[@]}"}; do [[ $word =~ $3 ]] || bad_value "$1" "$4"; done
  words_of "$1" "$2"
}
list_of SEEDS SEED_LIST '^(0|[1-9][0-9]*)$' "a list of integers (0, 1, ...)"
list_of FOLDS FOLD_LIST '^(0|[1-9][0-9]*)$' "a list of integers (0, 1, ...)"
list_of BATCH_SIZES BATCH_LIST '^[1-9][0-9]*$' "a list of positive integers"
list_of SHOTS SHOT_LIST '^[1-9][0-9]*$' "a list of positive integers"
[[ $EPOCHS =~ ^[1-9][0-9]*$ ]] || bad_value EPOCHS "a positive integer"
# Names (and manifest paths) are quoted into the commands; a control character would break the job list's
# one-line-a-run files (--list, grid.py done --print), as in RUNS and SEARCH_RUNS.
list_of DATASETS DATASET_LIST '^[^[:cntrl:]]+$' "a list of names without control characters"
list_of BACKBONES BACKBONE_LIST '^[^[:cntrl:]]+$' "a list of names without control characters"
list_of FOLD_DATASETS FOLD_DATASET_LIST '^[^[:cntrl:]]+$' "a list of names without control characters"
for name in RUNS SEARCH_RUNS; do
  [[ ${!name} == *[[:cntrl:]]* ]] && bad_value "$name" "a folder name without control characters (newline, tab, ...)"
done
[[ -n ${SLURM_JOB_ID:-} && ! $SLURM_JOB_ID =~ ^[0-9]+$ ]] && bad_value SLURM_JOB_ID "a Slurm job id (digits)"  # locks
words_of EXTRA_ARGS EXTRA_LIST  # word lists: each word quoted into the command as it is
words_of PROBE_ARGS PROBE_LIST
# PYTHON, CONFIT_DATA: one word each, quoted wherever used.

# Each dataset's and backbone's folder name in run paths, from grid.py (rundir.py's rule: one implementation,
# shared with the scripts' default --out), asked once; it refuses two values that would share a folder.
folder_names() {  # dataset|backbone, values... -> FOLDER_NAMES, the values' names in the same order
  local names
  FOLDER_NAMES=()
  (( $# > 1 )) || return 0
  names=$("$PYTHON" grid.py names "$1" -- "${@:2}") || exit 2  # grid.py said why, in one line
  mapfile -t FOLDER_NAMES <<< "$names"
}
folder_names dataset ${DATASET_LIST[@]+"${DATASET_LIST[@]}"}
DATASET_DIRS=(${FOLDER_NAMES[@]+"${FOLDER_NAMES[@]}"})
folder_names backbone ${BACKBONE_LIST[@]+"${BACKBONE_LIST[@]}"}
BACKBONE_DIRS=(${FOLDER_NAMES[@]+"${FOLDER_NAMES[@]}"})

if (( QUICK )) && [[ ! -f "$CONFIT_DATA/demo/manifest.csv" && $MODE != count && $MODE != list ]]; then
  "$PYTHON" prepare.py demo --out "$CONFIT_DATA/demo" || exit 1
fi

# ---------------- the grid: one entry per job, in a stable order ----------------
JOB_OUT=() JOB_COMMAND=() JOB_ABOUT=() JOB_CELL=()
add_job() {  # run folder, description, command (one line of shell, runnable as it is)
  JOB_OUT+=("$1"); JOB_ABOUT+=("$2"); JOB_COMMAND+=("$3")
  local fold=; [[ $repeat == fold-* ]] && fold=${repeat#fold-}
  JOB_CELL+=("$(printf '%s\t' "$dataset" "$backbone" "$arm" "$EPOCHS")$fold")  # for --plan
}
BATCH_WORD=$'\n@batch@'  # an argument no value from the environment can be (those have no newline)
quoted() {  # words -> each quoted for the shell, a space before each; BATCH_WORD becomes "$batch" (the
            # searched batch size, read when the job starts)
  local word
  for word; do if [[ $word == "$BATCH_WORD" ]]; then printf ' "$batch"'; else printf ' %q' "$word"; fi; done
}
arm_command() {  # arm, run folder, arguments...: the arm's scripts as one line of shell, every word quoted
  local arm=$1 out=$2 python; shift 2
  python=$(printf %q "$PYTHON")
  # --resume everywhere: a finished run (or probe) is left as it is, an unfinished one goes on or starts again
  if [[ $arm == frozen ]]; then  # probe.py takes no training arguments: its own (PROBE_ARGS)
    echo "$python probe.py$(quoted "$@" --out "$out" --resume)"
  elif [[ $arm == finetune ]]; then
    echo "$python finetune.py$(quoted "$@" --out "$out" --resume)"
  else
    echo "$python pairtune.py$(quoted "$@" --out "$out" --resume) && $python probe.py$(quoted --ckpt "$out" --resume)"
  fi
}
repeats_of() {  # dataset -> its repeats: fold-K for fold datasets, else seed-N
  local d r
  for d in ${FOLD_DATASET_LIST[@]+"${FOLD_DATASET_LIST[@]}"}; do
    if [[ $d == "$1" ]]; then
      for r in ${FOLD_LIST[@]+"${FOLD_LIST[@]}"}; do echo "fold-$r"; done
      return
    fi
  done
  for r in ${SEED_LIST[@]+"${SEED_LIST[@]}"}; do echo "seed-$r"; done
}
split_args() {  # repeat -> SPLIT_ARGS, the scripts' arguments for it
  if [[ $1 == fold-* ]]; then SPLIT_ARGS=(--seed 0 --fold "${1#fold-}"); else SPLIT_ARGS=(--seed "${1#seed-}"); fi
}

for pass in search grid; do
  [[ $pass == search && ${#BATCH_LIST[@]} == 0 ]] && continue
  shot_list=(all) arms=(finetune pairtune)
  if [[ $pass == grid && ${#SHOT_LIST[@]} -gt 0 ]]; then  # the grid only: the search runs on whole train sets
    shot_list=("${SHOT_LIST[@]}") arms+=(frozen)
  fi
  for (( d = 0; d < ${#DATASET_LIST[@]}; d++ )); do
    dataset=${DATASET_LIST[d]} dataset_dir=${DATASET_DIRS[d]}
    mapfile -t repeats < <(repeats_of "$dataset")
    for (( b = 0; b < ${#BACKBONE_LIST[@]}; b++ )); do
      backbone=${BACKBONE_LIST[b]} backbone_dir=${BACKBONE_DIRS[b]}
      for shots in "${shot_list[@]}"; do
        shot_dir= shot_args=()
        [[ $shots != all ]] && shot_dir=shots-$shots/ shot_args=(--shots "$shots")
        for repeat in ${repeats[@]+"${repeats[@]}"}; do
          split_args "$repeat"
          common=(--dataset "$dataset" --backbone "$backbone" --epochs "$EPOCHS" "${SPLIT_ARGS[@]}"
                  ${EXTRA_LIST[@]+"${EXTRA_LIST[@]}"} ${shot_args[@]+"${shot_args[@]}"})
          for arm in "${arms[@]}"; do
            out="$RUNS/$dataset_dir/$backbone_dir/$arm/$shot_dir$repeat"
            if [[ $arm == frozen ]]; then  # the pre-trained encoder, frozen, probed on the same K clips
              add_job "$out" "frozen probe $dataset $backbone $shot_dir$repeat" "$(arm_command frozen "$out" \
                --ckpt "$backbone" --dataset "$dataset" "${SPLIT_ARGS[@]}" "${shot_args[@]}" \
                ${PROBE_LIST[@]+"${PROBE_LIST[@]}"})"
            elif [[ $pass == search ]]; then  # the first seed or fold only, at every batch size
              [[ $repeat != "${repeats[0]}" ]] && continue
              for batch in "${BATCH_LIST[@]}"; do
                out="$SEARCH_RUNS/$dataset_dir/$backbone_dir/$arm/batch-$batch/$repeat"
                add_job "$out" "search $arm $dataset $backbone $repeat batch $batch" \
                  "$(arm_command "$arm" "$out" "${common[@]}" --batch-size "$batch")"
              done
            elif (( ${#BATCH_LIST[@]} )); then  # the batch size the search chose, read when the job starts
              chooser="$(printf %q "$PYTHON") grid.py best-batch"
              chooser+="$(printf ' %q' "$SEARCH_RUNS/$dataset_dir/$backbone_dir/$arm" "${BATCH_LIST[@]}")"
              add_job "$out" "$arm $dataset $backbone $shot_dir$repeat (searched batch size)" \
                "batch=\$($chooser) && $(arm_command "$arm" "$out" "${common[@]}" --batch-size "$BATCH_WORD")"
            else
              add_job "$out" "$arm $dataset $backbone $shot_dir$repeat" "$(arm_command "$arm" "$out" "${common[@]}")"
            fi
          done
        done
      done
    done
  done
  [[ $pass == search ]] && SEARCH_JOBS=${#JOB_OUT[@]}
done
N_JOBS=${#JOB_OUT[@]}

# done = the run marked finished with its results written (rundir.run_is_done; for PairTune: its probe too)
is_done() { "$PYTHON" grid.py done "$1"; }
done_of_all() { (( N_JOBS )) && "$PYTHON" grid.py done --print "${JOB_OUT[@]}"; }  # the done ones, a line each

# ---------------- one job: skip if done, lock its folder, log, keep the exit status ----------------
# RUN/.lock is one line, HOST PID START [SLURM_JOB_ID], START being the process's start time (field 22 of
# /proc/PID/stat, clock ticks after boot): a recycled process id is not the runner. outdir.py's
# FolderLock reads and writes the same file by the same rules, and a script this runner starts finds
# its runner (an ancestor) named in it and goes on under it.
proc_start() {  # process id -> its start time (field 22 of /proc/PID/stat); fails if it is gone or a zombie
  local stat= fields
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  read -r -d '' stat 2>/dev/null < "/proc/$1/stat"
  [[ $stat == *")"* ]] || return 1
  read -r -a fields <<< "${stat##*)}"  # after the last ')': the command name may hold spaces and ')'
  [[ ${fields[0]:-Z} != [ZX] && ${fields[19]:-} =~ ^[0-9]+$ ]] || return 1  # fields[0] is field 3, the state
  echo "${fields[19]}"
}
parse_lock() {  # a lock's text -> LOCK_FIELDS (host, pid, start[, Slurm job id]); fails if it is not such a line
  read -r -d '' -a LOCK_FIELDS <<< "$1"
  [[ ${#LOCK_FIELDS[@]} == [34] && ${LOCK_FIELDS[1]} =~ ^[0-9]+$ && ${LOCK_FIELDS[2]} =~ ^[0-9]+$ ]]
}
holder_of() {  # a lock's host, pid, start[, Slurm job id] -> its runner in words (on this host: when it started)
  local text="process $2 on $1${4:+ (Slurm job $4)}, start $3" boot tick when
  if [[ $1 == "$(hostname)" ]]; then  # ticks since boot -> a wall-clock time
    boot=$(awk '$1 == "btime" { print $2 }' /proc/stat 2>/dev/null) tick=$(getconf CLK_TCK 2>/dev/null)
    if [[ $boot =~ ^[0-9]+$ && $tick =~ ^[1-9][0-9]*$ ]] &&
       when=$(date -d "@$(( boot + 10#$3 / tick ))" '+%F %T' 2>/dev/null); then text+=" ($when)"; fi
  fi
  echo "$text"
}
slurm_job_gone() {  # Slurm job id -> 0 if Slurm says it no longer runs or waits (a node lost, scancel -9)
  local listed
  command -v squeue > /dev/null || return 1
  # %A: each task's own job id (-j of an array's first task lists all its tasks); an exact line
  if listed=$(squeue -h --jobs="$1" -o %A 2>&1); then ! grep -qx -- "$1" <<< "$listed"
  else [[ $listed == *"Invalid job id"* ]]; fi  # a job finished long ago; any other error: not known
}
stale_because() {  # a lock's host, pid, start[, Slurm job id] -> why its runner is gone (nothing while it may run)
  local now
  if [[ $1 == "$(hostname)" ]]; then  # on its own host the process says it all
    if ! now=$(proc_start "$2"); then echo "process $2 on $1 is gone"
    elif [[ $now != "$3" ]]; then
      echo "process $2 on $1 is gone: its id now names a process started at $now, not $3"
    fi
  elif [[ -n ${4:-} ]] && slurm_job_gone "$4"; then echo "Slurm job $4 of process $2 on $1 is gone"; fi
}
take_lock() {  # run folder -> 0 if this process now holds its lock; else LOCK_HOLDER says who does
  local lock=$1/.lock held= why= taken=1 mutex try
  LOCK_LINE="$(hostname) $$ $(proc_start $$)${SLURM_JOB_ID:+ $SLURM_JOB_ID}"
  for try in 1 2 3; do  # a lock let go of, or not yet written, just now: look again
    if (set -o noclobber; echo "$LOCK_LINE" > "$lock") 2>/dev/null; then return 0; fi
    held=$(cat -- "$lock" 2>/dev/null) && [[ -n $held ]] && break
    sleep 0.1
  done
  # A line that does not parse (an older format, garbage) is an unknown runner's: never taken over.
  parse_lock "$held" && why=$(stale_because "${LOCK_FIELDS[@]}")
  # One taker at a time (a flock on the run folder itself, as outdir.py takes it: let go by the kernel
  # if its holder dies, and no file left behind), and the lock is removed only if it still names the
  # runner found gone: a new lock can only appear after that removal, so two takers never both win.
  # (Without flock on the file system: no takeover.)
  if [[ -n $why ]] && exec {mutex}< "$1" 2>/dev/null; then
    if flock -w 30 "$mutex"; then
      if [[ $(cat -- "$lock" 2>/dev/null) == "$held" ]]; then
        rm -f -- "$lock"
        echo "== took over the stale lock of $1 ($why)"
      fi
      (set -o noclobber; echo "$LOCK_LINE" > "$lock") 2>/dev/null && taken=0
    fi
    exec {mutex}>&-
    (( taken == 0 )) && return 0
    held=$(cat -- "$lock" 2>/dev/null)  # who won, for the message
  fi
  if parse_lock "$held"; then
    LOCK_HOLDER=$(holder_of "${LOCK_FIELDS[@]}")
    echo "== $1 is locked by $LOCK_HOLDER$([[ ${LOCK_FIELDS[0]} != "$(hostname)" ]] &&
      echo " (another machine: delete $lock if that runner is gone)")"
  else
    LOCK_HOLDER="an unknown runner (its lock reads '$(shown "${held:0:100}")')"
    echo "== $1 is locked by $LOCK_HOLDER: delete $lock if no runner uses this folder"
  fi
  return 1
}
release_lock() {  # run folder: its lock, if it is still this process's (never another runner's)
  [[ -n $LOCK_LINE && $(cat -- "$1/.lock" 2>/dev/null) == "$LOCK_LINE" ]] && rm -f -- "$1/.lock"
  return 0
}

run_job() {  # job number -> the job's exit status (0 if done or skipped)
  local i=$1 out=${JOB_OUT[$1]} command=${JOB_COMMAND[$1]} status
  LOCKED_ELSEWHERE=0
  if is_done "$out"; then echo "== job $i/$N_JOBS: skip $out (results exist)"; return 0; fi
  mkdir -p -- "$out"
  # Another runner has it: not run here, a failure at the end unless that runner finishes it.
  take_lock "$out" || { LOCKED_ELSEWHERE=1; return 0; }
  # Let go of the lock however this ends; scancel and Slurm's time limit send SIGTERM first.
  local release; release="release_lock $(printf %q "$out")"
  trap "$release" EXIT
  trap "$release; exit 130" INT
  trap "$release; exit 143" TERM
  if is_done "$out"; then  # finished by another runner just before the lock
    release_lock "$out"; trap - EXIT INT TERM; return 0
  fi
  echo "== job $i/$N_JOBS: ${JOB_ABOUT[$i]} -> $out"
  rm -f -- "$out/job.rc"
  if [[ -n ${SLOT_FD:-} ]]; then  # not inherited: a process the job leaves behind must not hold the GPU slot
    bash -c "$command" {SLOT_FD}>&- {ALIVE_FD}>&- > "$out/job.log" 2>&1
  elif [[ $MODE == parallel_worker ]]; then  # the display shows progress; the job's output goes to its log
    bash -c "$command" {ALIVE_FD}>&- > "$out/job.log" 2>&1
  else
    bash -c "$command" 2>&1 | tee "$out/job.log"
  fi
  status=${PIPESTATUS[0]}
  echo "$status" > "$out/job.rc"
  release_lock "$out"; trap - EXIT INT TERM
  (( status )) && echo "== job $i/$N_JOBS FAILED (exit status $status): its log is $out/job.log"
  return "$status"
}

# ---------------- the end: what failed, what is missing, the report from what finished ----------------
# RUNS/report/missing.txt (one run folder a line; eval.py's report names those runs) is written, replaced
# or removed only while it is the file this project wrote last there, as the folder's record of what it
# wrote says (report/.audioconfit-written, kept with outdir.py: "SHA256 NAME" a line, "- NAME" when
# removed, the last line of a name counts); any other file there is the user's, left as it is.
write_missing() {  # the missing run folders (none: no list)
  local report=$RUNS/report record=$RUNS/report/.audioconfit-written want= have=
  if [[ -e $report/missing.txt || -L $report/missing.txt ]]; then
    [[ -f $record && -f $report/missing.txt && ! -L $report/missing.txt ]] &&
      want=$(awk '$2 == "missing.txt" && NF == 2 { digest = $1 } END { print digest }' "$record") &&
      read -r have _ < <(sha256sum < "$report/missing.txt")
    if [[ -z $want || $want != "$have" ]]; then
      echo "== $report/missing.txt is not the one run_all.sh wrote (or was changed since): left as it is," \
        "the list above not written to it (the report reads that file)"
      return 0
    fi
  fi
  if (( $# )); then
    printf '%s\n' "$@" > "$report/missing.txt" &&
      read -r have _ < <(sha256sum < "$report/missing.txt") && echo "$have missing.txt" >> "$record"
  elif [[ -f $report/missing.txt ]]; then
    rm -f -- "$report/missing.txt" && echo "- missing.txt" >> "$record"
  fi
}

finish() {
  local i failed=0 not_run=0 missing=() done_runs
  done_runs=$(done_of_all)
  for (( i = 0; i < N_JOBS; i++ )); do
    grep -qxF -- "${JOB_OUT[$i]}" <<< "$done_runs" && continue
    missing+=("${JOB_OUT[$i]}")
    if [[ -n ${LOCKED_BY[i]:-} ]]; then  # never started here, and its holder has not finished it: a failure
      (( not_run++ == 0 )) &&
        echo "== jobs not run: locked by another runner, and not done (run them again once it is gone):"
      echo "   job $i, ${JOB_OUT[$i]}, locked by ${LOCKED_BY[i]}"
    elif [[ -f ${JOB_OUT[$i]}/job.rc && $(cat "${JOB_OUT[$i]}/job.rc") != 0 ]]; then
      (( failed++ == 0 )) && echo "== failed jobs (the command reruns one; bash run_all.sh reruns all that are left):"
      echo "   job $i, exit status $(cat "${JOB_OUT[$i]}/job.rc"), log ${JOB_OUT[$i]}/job.log"
      echo "     ${JOB_COMMAND[$i]}"
    fi
  done
  mkdir -p -- "$RUNS/report"
  if (( ${#missing[@]} )); then
    echo "== ${#missing[@]} of $N_JOBS runs missing (failed, running elsewhere or not started):"
    for i in "${missing[@]}"; do
      echo "   $i$([[ -f $i/.lock ]] &&
        echo " (locked: $(shown "$(cat "$i/.lock" 2>/dev/null)"), host, process, start, Slurm job)")"
    done
  fi
  write_missing ${missing[@]+"${missing[@]}"}
  # Table 2 on stdout; Table 3, confusion and Figures 2-3 into $RUNS/report/ (report.md links them).
  # Figures need matplotlib (skipped with a note without it); Figure 3 uses umap-learn where installed,
  # else t-SNE or PCA, and says which.
  if (( GRID_NOT_RUN )); then
    echo "== $GRID_NOT_RUN job(s) not run: no free GPU slot (a process outside the grid held one)"
  fi
  local reported=0
  if [[ -d $RUNS ]]; then "$PYTHON" eval.py report "$RUNS" || reported=$?; fi  # e.g. a report.md of yours there
  (( reported )) && echo "== the report was not written (exit status $reported, above)"
  (( failed == 0 && not_run == 0 && GRID_NOT_RUN == 0 && reported == 0 ))
}

# ---------------- --parallel K: K jobs at once, xargs the engine, one GPU (or CPU share) each ----------------
run_parallel() {
  local gpus=() state started=$SECONDS first last
  if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then  # set, even to nothing (no GPU): the user's choice
    IFS=, read -r -a gpus <<< "$CUDA_VISIBLE_DEVICES"
  elif command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
    mapfile -t gpus < <(nvidia-smi --query-gpu=index --format=csv,noheader)
  fi
  if (( ${#gpus[@]} )); then
    if (( PARALLEL > ${#gpus[@]} )); then
      echo "error: --parallel $PARALLEL needs $PARALLEL GPUs, and ${#gpus[@]} are visible (${gpus[*]})" >&2; return 2
    fi
    export GRID_GPUS="${gpus[*]}"
  else  # no GPU: K CPU jobs, the cores shared out, unless the user chose a thread count
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / PARALLEL > 0 ? $(nproc) / PARALLEL : 1 ))}
    export GRID_GPUS=
  fi
  state=$(mktemp -d "${TMPDIR:-/tmp}/run_all.XXXXXX")
  export GRID_STATE=$state GRID_SLOTS=$PARALLEL
  echo "== $N_JOBS jobs, $PARALLEL at once$([[ -n $GRID_GPUS ]] && echo " on GPUs $GRID_GPUS" || \
    echo " on CPU, $OMP_NUM_THREADS thread(s) each"); each job's output goes to job.log in its run folder"
  # The display in the background; xargs in the foreground, where Ctrl-C reaches it, its workers and
  # their jobs (a background job of a script ignores SIGINT). The display ignores it: it is stopped here.
  # On Ctrl-C or SIGTERM (signal the process group: bash holds a trap while xargs runs), xargs ends at
  # once; the runner waits for its workers (each holds a shared flock on GRID_STATE/workers) to let go
  # of their locks, so a rerun right after finds them free. Globals: the EXIT trap also runs at the top.
  GRID_DISPLAY=
  trap 'kill $GRID_DISPLAY 2>/dev/null; rm -rf "$GRID_STATE"' EXIT
  trap 'stop_parallel 130' INT
  trap 'stop_parallel 143' TERM
  ( trap '' INT; trap 'kill $nap 2>/dev/null; exit 0' TERM  # its sleep ends with it, letting go of stdout
    while :; do show_progress "$state" "$started"; sleep 2 & nap=$!; wait $nap; done ) &
  GRID_DISPLAY=$!
  # The search's jobs first: the grid's jobs read the batch size it chose.
  for range in "0 $(( SEARCH_JOBS - 1 ))" "$SEARCH_JOBS $(( N_JOBS - 1 ))"; do
    read -r first last <<< "$range"
    (( last < first )) && continue
    # ${a[@]+...}: an empty array under set -u on bash < 4.4
    seq "$first" "$last" |
      xargs -P "$PARALLEL" -I{} bash "$PWD/run_all.sh" ${QUICK_FLAG[@]+"${QUICK_FLAG[@]}"} --parallel-worker {}
    local rc=$?  # 123: some job failed, which finish reports from job.rc; anything else is xargs's own
    if (( rc != 0 && rc != 123 )); then echo "error: xargs exited with status $rc" >&2; return 1; fi
  done
  kill "$GRID_DISPLAY"; wait "$GRID_DISPLAY" 2>/dev/null
  show_progress "$state" "$started"; [[ -t 1 ]] && echo
  GRID_NOT_RUN=$(find "$state" -name '*.noslot' | wc -l)  # jobs that found no GPU slot: failures for finish
  local held job  # jobs another runner held: failures for finish unless done by then
  while IFS= read -r -d '' held; do
    job=${held##*/}; job=${job%.elsewhere}
    [[ $job =~ ^[0-9]+$ ]] && LOCKED_BY[job]=$(< "$held")
  done < <(find "$state" -name '*.elsewhere' -print0)
  rm -rf "$state"; trap - EXIT INT TERM
}

stop_parallel() {  # exit status: Ctrl-C or SIGTERM under --parallel; the EXIT trap then cleans up
  kill $GRID_DISPLAY 2>/dev/null
  flock -w 120 "$GRID_STATE/workers" true  # until every worker has let go of its job's lock
  (( $1 == 130 )) && echo && echo "== interrupted: bash run_all.sh goes on from here"
  exit "$1"
}

show_progress() {  # state folder, start time: one line, rewritten in place on a terminal
  local ran skipped failed running elsewhere left elapsed eta="" line job
  ran=$(find "$1" -name '*.ran' | wc -l); skipped=$(find "$1" -name '*.skipped' | wc -l)
  failed=$(find "$1" -name '*.failed' | wc -l); running=$(find "$1" -name '*.running' | wc -l)
  elsewhere=$(find "$1" -name '*.elsewhere' | wc -l)
  left=$(( N_JOBS - ran - skipped - failed - running - elsewhere )); elapsed=$(( SECONDS - $2 ))
  for job in $(find "$1" -name '*.failed' -printf '%f\n' | sort -n); do  # say each failure once, as it comes
    job=${job%.failed}
    if [[ ! -e $1/$job.reported ]]; then
      touch "$1/$job.reported"
      [[ -t 1 ]] && printf '\r%-100s\r' ""
      if [[ -e $1/$job.noslot ]]; then echo "== job $job NOT RUN (no free GPU slot): ${JOB_OUT[$job]}"
      else
        echo "== job $job FAILED (exit status $(cat "${JOB_OUT[$job]}/job.rc" 2>/dev/null)): ${JOB_OUT[$job]}/job.log"
      fi
    fi
  done
  if (( ran + failed > 0 && left + running > 0 )); then  # from the jobs that ran: skipped ones took no time
    eta=", about $(minutes $(( elapsed * (left + running) / (ran + failed) ))) left"
  fi
  line="   done $(( ran + skipped )) / running $running / failed $failed / left $left, $(minutes "$elapsed")$eta"
  (( elsewhere )) && line+=", $elsewhere run by another runner"
  if [[ -t 1 ]]; then printf '\r%-100s' "$line"
  elif [[ $line != "${LAST_LINE:-}" ]]; then echo "$line"; LAST_LINE=$line; fi
}
minutes() { if (( $1 < 120 )); then echo "$1 s"; else echo "$(( ($1 + 30) / 60 )) min"; fi; }

parallel_worker() {  # one job under --parallel: a free GPU slot, then the job; its state for the display
  local i=$1 gpus slot
  if [[ ! $GRID_SLOTS =~ ^[1-9][0-9]*$ ]]; then  # set by --parallel; read by arithmetic below
    echo "error: GRID_SLOTS: '$(shown "$GRID_SLOTS")' is not a number of slots" >&2; return 2
  fi
  exec {ALIVE_FD}> "$GRID_STATE/workers"; flock -s "$ALIVE_FD"  # while it runs (for an interrupted runner)
  if [[ -n $GRID_GPUS ]]; then
    read -r -a gpus <<< "$GRID_GPUS"
    for (( slot = 0; slot < GRID_SLOTS; slot++ )); do  # at most K jobs run, so one of K slots is free
      exec {SLOT_FD}> "$GRID_STATE/slot-$slot"
      if flock -n "$SLOT_FD"; then export CUDA_VISIBLE_DEVICES=${gpus[$slot]}; break; fi
      exec {SLOT_FD}>&-; SLOT_FD=
    done
    if [[ -z $SLOT_FD ]]; then  # never silently all GPUs: something outside the grid holds the slots
      echo "error: job $i not run: no free GPU slot in $GRID_STATE (a process outside the grid holds one)" >&2
      touch "$GRID_STATE/$i.noslot" "$GRID_STATE/$i.failed"; return 1
    fi
  fi
  if is_done "${JOB_OUT[$i]}"; then touch "$GRID_STATE/$i.skipped"; return 0; fi
  touch "$GRID_STATE/$i.running"
  run_job "$i" > "$GRID_STATE/$i.out" 2>&1
  local status=$?
  rm -f "$GRID_STATE/$i.running"
  if (( status )); then touch "$GRID_STATE/$i.failed"
  elif (( LOCKED_ELSEWHERE )); then echo "$LOCK_HOLDER" > "$GRID_STATE/$i.elsewhere"
  else touch "$GRID_STATE/$i.ran"; fi
  return $(( status > 0 ? 1 : 0 ))  # xargs stops everything on 255
}

# ---------------- what to do ----------------
case $MODE in
  count) if [[ $COUNT_WHAT == search ]]; then echo "$SEARCH_JOBS"; else echo "$N_JOBS"; fi;;
  list)
    done_runs=$(done_of_all)
    for (( i = 0; i < N_JOBS; i++ )); do
      grep -qxF -- "${JOB_OUT[$i]}" <<< "$done_runs" || echo "${JOB_COMMAND[$i]}  # job $i: ${JOB_ABOUT[$i]}"
    done;;
  job)
    if (( JOB >= N_JOBS )); then echo "error: job $JOB: the grid has jobs 0 to $(( N_JOBS - 1 ))" >&2; exit 2; fi
    run_job "$JOB"; status=$?
    if (( status == 0 && LOCKED_ELSEWHERE )) && ! is_done "${JOB_OUT[$JOB]}"; then  # never started: a failure
      echo "== job $JOB NOT RUN: ${JOB_OUT[$JOB]} is locked by $LOCK_HOLDER, and not done"; exit 1
    fi
    exit "$status";;
  parallel_worker) parallel_worker "$JOB";;
  plan)
    for (( i = 0; i < N_JOBS; i++ )); do  # job, run folder, dataset, backbone, arm, epochs, fold
      printf '%s\t%s\t%s\n' "$i" "${JOB_OUT[$i]}" "${JOB_CELL[$i]}"
    done | "$PYTHON" grid.py plan --search-jobs "$SEARCH_JOBS" --logs "$RUNS" --logs "$SEARCH_RUNS" \
             --logs "$RUNS-timing" --data-root "$CONFIT_DATA";;
  report) finish;;
  sequential|parallel)
    started=$SECONDS
    if [[ $MODE == parallel ]]; then run_parallel || exit $?
    else
      for (( i = 0; i < N_JOBS; i++ )); do
        run_job "$i"
        (( LOCKED_ELSEWHERE )) && LOCKED_BY[i]=$LOCK_HOLDER
      done
    fi
    echo "== all jobs tried in $(( SECONDS - started )) s"
    finish;;
esac
