#!/bin/bash
# The demo's student and its no-KD baseline at higher learning rates (seed 42, the demo's split and budget).
set -e
cd /work/main && source .venv/bin/activate
while pgrep -f multi_teacher.py > /dev/null; do sleep 20; done
date
[ -d /work/runs/lr/cache ] || cp -r /work/runs/demo-chain/student/teacher_cache /work/runs/lr/cache
for lr in 2e-4 1e-4; do
  /usr/bin/time -f "wall %e s" lmdistill distill configs/demo.yaml teacher.name_or_path=/work/demo_teacher \
    training.learning_rate=$lr training.teacher_cache=/work/runs/lr/cache output_dir=/work/runs/lr/student-$lr
  steps=$(python -c "import json;print(json.load(open('/work/runs/lr/student-$lr/results.json'))['steps'])")
  /usr/bin/time -f "wall %e s" lmdistill distill configs/demo.yaml teacher.name_or_path=/work/demo_teacher \
    training.learning_rate=$lr 'distill.losses={ce: 1.0}' 'distill.stages=[]' data.unlabeled=null \
    training.teacher_cache=null training.max_steps=$steps output_dir=/work/runs/lr/baseline-$lr
  date
done
