#!/usr/bin/env bash
# The full AudioConFit comparison: datasets x backbones x seeds (fold datasets: folds) x
# {finetune, pairtune + probe}, ending with the results table and the analysis in RUNS/report/.
#
#   bash run_all.sh            # the paper's grid (prepare the datasets first, see README)
#   bash run_all.sh --quick    # demo data + tiny random backbone, a few minutes on 2 CPU cores
#   DATASETS="gtzan emodb" BACKBONES=wav2vec2 SEEDS="0 1 2" EPOCHS=20 bash run_all.sh
#
# Environment: DATASETS, BACKBONES, SEEDS, EPOCHS, FOLDS (for fold datasets), FOLD_DATASETS
# (datasets run over FOLDS instead of SEEDS; default esc50), RUNS (output root, default runs),
# CONFIT_DATA (data root, default data), PYTHON, EXTRA_ARGS (passed to pairtune.py and finetune.py).
# Results go to RUNS/<dataset>/<backbone>/<method>/<seed-N|fold-N>/; a run whose results exist is
# skipped, an interrupted one resumes from its checkpoint.
set -euo pipefail
cd "$(dirname "$0")"

QUICK=0
if [[ "${1:-}" == "--quick" ]]; then QUICK=1; elif [[ -n "${1:-}" ]]; then
  echo "usage: bash run_all.sh [--quick]" >&2; exit 2
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
  if [[ ! -f "$CONFIT_DATA/demo/manifest.csv" ]]; then
    "$PYTHON" prepare.py demo --out "$CONFIT_DATA/demo"
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

started=$SECONDS
for dataset in $DATASETS; do
  if [[ " $FOLD_DATASETS " == *" $dataset "* ]]; then
    repeats=(); for f in $FOLDS; do repeats+=("fold-$f"); done
  else
    repeats=(); for s in $SEEDS; do repeats+=("seed-$s"); done
  fi
  for backbone in $BACKBONES; do
    for repeat in "${repeats[@]}"; do
      if [[ $repeat == fold-* ]]; then
        split_args=(--seed 0 --fold "${repeat#fold-}")
      else
        split_args=(--seed "${repeat#seed-}")
      fi
      common=(--dataset "$dataset" --backbone "$backbone" --epochs "$EPOCHS" "${split_args[@]}" $EXTRA_ARGS)
      name="${backbone//\//_}"

      out="$RUNS/$dataset/$name/finetune/$repeat"
      # done = the run marked finished with its results written (eval.py's rule for finding runs)
      if "$PYTHON" eval.py done "$out"; then
        echo "== skip $out (results exist)"
      else
        echo "== finetune $dataset $backbone $repeat -> $out"
        "$PYTHON" finetune.py "${common[@]}" --out "$out" --resume
      fi

      out="$RUNS/$dataset/$name/pairtune/$repeat"
      if "$PYTHON" eval.py done "$out"; then  # for PairTune: its probe too
        echo "== skip $out (results exist)"
      else
        echo "== pairtune + probe $dataset $backbone $repeat -> $out"
        "$PYTHON" pairtune.py "${common[@]}" --out "$out" --resume
        "$PYTHON" probe.py --ckpt "$out"
      fi
    done
  done
done

echo "== all runs done in $(( SECONDS - started )) s"
# Table 2 on stdout; Table 3, confusion and Figures 2-3 into $RUNS/report/ (report.md links them).
# Figures need matplotlib (skipped with a note without it); Figure 3 uses umap-learn where installed,
# else t-SNE or PCA, and says which.
"$PYTHON" eval.py report "$RUNS"
