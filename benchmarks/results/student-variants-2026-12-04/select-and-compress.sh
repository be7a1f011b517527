#!/bin/bash
# wait for the seeds, pick the seed with the best validation accuracy (seed 42: the compress run l2n), compress it
while pgrep -f batch4.sh > /dev/null; do sleep 3; done
best=$(python3 - <<'PY'
import json
runs = {42: "/work/runs/x/l2n/student/results.json"} | {s: f"/work/runs/x/l2ns{s}/results.json" for s in (1, 2, 3)}
val = {s: json.load(open(p))["validation"]["accuracy"] for s, p in runs.items()}
print(max(val, key=val.get))
PY
)
echo "selected seed $best (best validation)" >> /work/runs/x/times
[ "$best" = "42" ] && exit 0
cd /work/main && source .venv/bin/activate
T=/work/runs/ml/teacher/model
echo "l2nc start $(date -u +%T)" >> /work/runs/x/times
/usr/bin/time -v lmdistill compress configs/demo-chain.yaml model.name_or_path=$T teacher.name_or_path=$T output_dir=/work/runs/x/l2nc report.energy=false student.num_layers=2 data.unlabeled.max_examples=null student.width.intermediate_size=384 report.latency_repeats=256 seed=$best data.split_seed=42 > /work/runs/x/l2nc.log 2>&1
echo "l2nc end $(date -u +%T) rc $?" >> /work/runs/x/times
