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
#
# Environment: DATASETS, BACKBONES, SEEDS, EPOCHS, FOLDS (for fold datasets), FOLD_DATASETS
# (datasets run over FOLDS instead of SEEDS; default esc50), RUNS (output root, default runs),
# CONFIT_DATA (data root, default data), PYTHON, EXTRA_ARGS (passed to pairtune.py and finetune.py),
# BATCH_SIZES (e.g. "32 64 128": the paper's batch-size search, below), SEARCH_RUNS (its runs,
# default RUNS-search), SHOTS (e.g. "1 2 4 8 16": few-shot learning curves, below), PROBE_ARGS (passed
# to the frozen encoder's probes of SHOTS). Relative paths are relative to this script's folder, where it runs.
# Needs Linux (flock, /proc) and bash 4.2 or newer.
#
# A job is one finetune run, or one pairtune run and its probe. Jobs are numbered in a stable order
# (the loops below), done or not. Results go to RUNS/<dataset>/<backbone>/<method>/<seed-N|fold-N>/;
# a job whose results exist is skipped, an interrupted one resumes from its checkpoint, a failed one
# leaves job.log and job.rc in its folder and the grid goes on. A lock file in the run folder (host,
# process id, Slurm job id) keeps two runners (a retry, two array tasks) off the same job at once; the
# lock of a runner that is gone (its process on this host, or its Slurm job) is taken over.
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
cd "$(dirname "$0")"

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
  if [[ ! -f "$CONFIT_DATA/demo/manifest.csv" && $MODE != count && $MODE != list ]]; then
    "$PYTHON" prepare.py demo --out "$CONFIT_DATA/demo" || exit 1
  fi
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

# ---------------- the grid: one entry per job, in a stable order ----------------
JOB_OUT=() JOB_COMMAND=() JOB_ABOUT=() JOB_CELL=()
add_job() {  # run folder, description, command (one line of shell, runnable as it is)
  JOB_OUT+=("$1"); JOB_ABOUT+=("$2"); JOB_COMMAND+=("$3")
  local fold=; [[ $repeat == fold-* ]] && fold=${repeat#fold-}
  JOB_CELL+=("$(printf '%s\t' "$dataset" "$backbone" "$arm" "$EPOCHS")$fold")  # for --plan
}
arm_command() {  # arm, run folder, arguments...: the arm's scripts as one line of shell
  local arm=$1 out=$2; shift 2
  local args; args=$(printf ' %q' "$@" --out "$out" --resume)
  if [[ $arm == frozen ]]; then  # probe.py takes no training arguments: its own (PROBE_ARGS), no --resume
    echo "$(printf %q "$PYTHON") probe.py$(printf ' %q' "$@" --out "$out")"
  elif [[ $arm == finetune ]]; then
    echo "$(printf %q "$PYTHON") finetune.py$args"
  else
    echo "$(printf %q "$PYTHON") pairtune.py$args && $(printf %q "$PYTHON") probe.py --ckpt $(printf %q "$out")"
  fi
}
repeats_of() {  # dataset -> its repeats: fold-K for fold datasets, else seed-N
  local r
  if [[ " $FOLD_DATASETS " == *" $1 "* ]]; then for r in $FOLDS; do echo "fold-$r"; done
  else for r in $SEEDS; do echo "seed-$r"; done; fi
}
split_args() {  # repeat -> the scripts' arguments for it
  if [[ $1 == fold-* ]]; then echo "--seed 0 --fold ${1#fold-}"; else echo "--seed ${1#seed-}"; fi
}

for pass in search grid; do
  [[ $pass == search && -z $BATCH_SIZES ]] && continue
  shot_list=${SHOTS:-all} arms="finetune pairtune"
  if [[ $pass == search ]]; then shot_list=all  # the search runs on whole train sets
  elif [[ -n $SHOTS ]]; then arms+=" frozen"; fi
  for dataset in $DATASETS; do
    mapfile -t repeats < <(repeats_of "$dataset")
    for backbone in $BACKBONES; do
      name="${backbone//\//_}"
      for shots in $shot_list; do
        shot_dir= shot_args=()
        [[ $shots != all ]] && shot_dir=shots-$shots/ shot_args=(--shots "$shots")
        for repeat in "${repeats[@]}"; do
          # shellcheck disable=SC2086  # EXTRA_ARGS and split_args are word lists
          common=(--dataset "$dataset" --backbone "$backbone" --epochs "$EPOCHS" $(split_args "$repeat") $EXTRA_ARGS
                  ${shot_args[@]+"${shot_args[@]}"})
          for arm in $arms; do
            out="$RUNS/$dataset/$name/$arm/$shot_dir$repeat"
            if [[ $arm == frozen ]]; then  # the pre-trained encoder, frozen, probed on the same K clips
              # shellcheck disable=SC2086  # PROBE_ARGS and split_args are word lists
              add_job "$out" "frozen probe $dataset $backbone $shot_dir$repeat" "$(arm_command frozen "$out" \
                --ckpt "$backbone" --dataset "$dataset" $(split_args "$repeat") "${shot_args[@]}" $PROBE_ARGS)"
            elif [[ $pass == search ]]; then  # the first seed or fold only, at every batch size
              [[ $repeat != "${repeats[0]}" ]] && continue
              for batch in $BATCH_SIZES; do
                out="$SEARCH_RUNS/$dataset/$name/$arm/batch-$batch/$repeat"
                add_job "$out" "search $arm $dataset $backbone $repeat batch $batch" \
                  "$(arm_command "$arm" "$out" "${common[@]}" --batch-size "$batch")"
              done
            elif [[ -n $BATCH_SIZES ]]; then  # the batch size the search chose, read when the job starts
              chooser="$(printf %q "$PYTHON") eval.py best-batch"
              chooser+=" $(printf %q "$SEARCH_RUNS/$dataset/$name/$arm") $BATCH_SIZES"
              command=$(arm_command "$arm" "$out" "${common[@]}" --batch-size @BATCH@)
              add_job "$out" "$arm $dataset $backbone $shot_dir$repeat (searched batch size)" \
                "batch=\$($chooser) && ${command//@BATCH@/\"\$batch\"}"
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
SEARCH_JOBS=${SEARCH_JOBS:-0}
N_JOBS=${#JOB_OUT[@]}

# done = the run marked finished with its results written (eval.py's rule; for PairTune: its probe too)
is_done() { "$PYTHON" eval.py done "$1"; }
done_of_all() { (( N_JOBS )) && "$PYTHON" eval.py done --print "${JOB_OUT[@]}"; }  # the done ones, a line each

# ---------------- one job: skip if done, lock its folder, log, keep the exit status ----------------
alive() {  # process id -> 0 if it runs (a zombie, killed but not yet reaped, does not)
  local state=
  kill -0 "$1" 2>/dev/null || [[ -e /proc/$1 ]] || return 1  # /proc: another user's process (kill: EPERM)
  [[ -r /proc/$1/stat ]] && read -r _ _ state _ < "/proc/$1/stat"
  [[ $state != Z ]]
}
slurm_job_gone() {  # Slurm job id -> 0 if Slurm says it no longer runs or waits (a node lost, scancel -9)
  local listed
  command -v squeue > /dev/null || return 1
  # %A: each task's own job id (-j of an array's first task lists all its tasks); an exact line
  if listed=$(squeue -h --jobs="$1" -o %A 2>&1); then ! grep -qx -- "$1" <<< "$listed"
  else [[ $listed == *"Invalid job id"* ]]; fi  # a job finished long ago; any other error: not known
}
stale_because() {  # a lock's host, process id and Slurm job id -> why its runner is gone (nothing if not)
  if [[ $1 == "$(hostname)" && -n $2 ]]; then  # on its own host the process says it all
    alive "$2" || echo "process $2 on $1 is gone"
  elif [[ -n $3 ]] && slurm_job_gone "$3"; then echo "Slurm job $3 of process $2 on $1 is gone"; fi
}
take_lock() {  # run folder -> 0 if this process now holds its lock
  local lock=$1/.lock me held host pid slurm_job why taken=1 mutex
  me="$(hostname) $$${SLURM_JOB_ID:+ $SLURM_JOB_ID}"
  if (set -o noclobber; echo "$me" > "$lock") 2>/dev/null; then return 0; fi
  held=$(cat "$lock" 2>/dev/null)
  read -r host pid slurm_job <<< "$held"
  why=$(stale_because "$host" "$pid" "$slurm_job")
  # One taker at a time (a flock on .lock.takeover, let go by the kernel if its holder dies), and the
  # lock is removed only if it still names the runner found gone: a new lock can only appear after
  # that removal, so two takers never both win. (Without flock on the file system: no takeover.)
  if [[ -n $why ]] && exec {mutex}>> "$lock.takeover" 2>/dev/null; then
    if flock -w 30 "$mutex"; then
      if [[ $(cat "$lock" 2>/dev/null) == "$held" ]]; then
        rm -f "$lock"
        echo "== took over the stale lock of $1 ($why)"
      fi
      (set -o noclobber; echo "$me" > "$lock") 2>/dev/null && taken=0
    fi
    exec {mutex}>&-
    (( taken == 0 )) && return 0
    held=$(cat "$lock" 2>/dev/null); read -r host pid slurm_job <<< "$held"; why=  # who won, for the message
  fi
  echo "== $1 is locked by process ${pid:-?} on ${host:-?}${slurm_job:+ (Slurm job $slurm_job)}$(
    [[ $host != "$(hostname)" && -z $why ]] && echo " (another machine: delete $lock if that runner is gone)")"
  return 1
}

run_job() {  # job number -> the job's exit status (0 if done or skipped)
  local i=$1 out=${JOB_OUT[$1]} command=${JOB_COMMAND[$1]} status
  LOCKED_ELSEWHERE=0
  if is_done "$out"; then echo "== job $i: skip $out (results exist)"; return 0; fi
  mkdir -p "$out"
  take_lock "$out" || { LOCKED_ELSEWHERE=1; return 0; }  # another runner has it: not ours, not a failure
  # Let go of the lock however this ends; scancel and Slurm's time limit send SIGTERM first.
  trap 'rm -f "$out/.lock"' EXIT
  trap 'rm -f "$out/.lock"; exit 130' INT
  trap 'rm -f "$out/.lock"; exit 143' TERM
  if is_done "$out"; then  # finished by another runner just before the lock
    rm -f "$out/.lock"; trap - EXIT INT TERM; return 0
  fi
  echo "== job $i: ${JOB_ABOUT[$i]} -> $out"
  rm -f "$out/job.rc"
  if [[ -n ${SLOT_FD:-} ]]; then  # not inherited: a process the job leaves behind must not hold the GPU slot
    bash -c "$command" {SLOT_FD}>&- {ALIVE_FD}>&- > "$out/job.log" 2>&1
  elif [[ $MODE == parallel_worker ]]; then  # the display shows progress; the job's output goes to its log
    bash -c "$command" {ALIVE_FD}>&- > "$out/job.log" 2>&1
  else
    bash -c "$command" 2>&1 | tee "$out/job.log"
  fi
  status=${PIPESTATUS[0]}
  echo "$status" > "$out/job.rc"
  rm -f "$out/.lock"; trap - EXIT INT TERM
  (( status )) && echo "== job $i FAILED (exit status $status): its log is $out/job.log"
  return "$status"
}

# ---------------- the end: what failed, what is missing, the report from what finished ----------------
finish() {
  local i failed=0 missing=() done_runs
  done_runs=$(done_of_all)
  for (( i = 0; i < N_JOBS; i++ )); do
    if ! grep -qxF -- "${JOB_OUT[$i]}" <<< "$done_runs"; then
      missing+=("${JOB_OUT[$i]}")
      if [[ -f ${JOB_OUT[$i]}/job.rc && $(cat "${JOB_OUT[$i]}/job.rc") != 0 ]]; then
        (( failed++ == 0 )) && echo "== failed jobs (the command reruns one; bash run_all.sh reruns all that are left):"
        echo "   job $i, exit status $(cat "${JOB_OUT[$i]}/job.rc"), log ${JOB_OUT[$i]}/job.log"
        echo "     ${JOB_COMMAND[$i]}"
      fi
    fi
  done
  mkdir -p "$RUNS/report"
  if (( ${#missing[@]} )); then
    echo "== ${#missing[@]} of $N_JOBS runs missing (failed, running elsewhere or not started):"
    for i in "${missing[@]}"; do
      echo "   $i$([[ -f $i/.lock ]] && echo " (locked: $(cat "$i/.lock" 2>/dev/null), host, process, Slurm job)")"
    done
    printf '%s\n' "${missing[@]}" > "$RUNS/report/missing.txt"
  else
    rm -f "$RUNS/report/missing.txt"
  fi
  # Table 2 on stdout; Table 3, confusion and Figures 2-3 into $RUNS/report/ (report.md links them).
  # Figures need matplotlib (skipped with a note without it); Figure 3 uses umap-learn where installed,
  # else t-SNE or PCA, and says which.
  if (( ${GRID_NOT_RUN:-0} )); then
    echo "== $GRID_NOT_RUN job(s) not run: no free GPU slot (a process outside the grid held one)"
  fi
  [[ -d $RUNS ]] && "$PYTHON" eval.py report "$RUNS"
  (( failed == 0 && ${GRID_NOT_RUN:-0} == 0 ))
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
  elif (( LOCKED_ELSEWHERE )); then touch "$GRID_STATE/$i.elsewhere"
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
    run_job "$JOB";;
  parallel_worker) parallel_worker "$JOB";;
  plan)
    for (( i = 0; i < N_JOBS; i++ )); do  # job, run folder, dataset, backbone, arm, epochs, fold
      printf '%s\t%s\t%s\n' "$i" "${JOB_OUT[$i]}" "${JOB_CELL[$i]}"
    done | "$PYTHON" eval.py plan --search-jobs "$SEARCH_JOBS" --logs "$RUNS" --logs "$SEARCH_RUNS" \
             --logs "$RUNS-timing" --data-root "$CONFIT_DATA";;
  report) finish;;
  sequential|parallel)
    started=$SECONDS
    if [[ $MODE == parallel ]]; then run_parallel || exit $?
    else for (( i = 0; i < N_JOBS; i++ )); do run_job "$i"; done; fi
    echo "== all jobs tried in $(( SECONDS - started )) s"
    finish;;
esac
