#!/usr/bin/env bash
# The performance benchmarks in one pass on a GPU machine (DESIGN.md §7); JSON results go to $OUT.
#
#   OUT=DIR bash benchmarks/gpu_suite.sh           # from the repository root, on the GPU machine
#   SMOKE=1 OUT=DIR bash benchmarks/gpu_suite.sh   # tiny sizes on any machine (CPU: a minute)
#
# Needs PyTorch, torchvision, OpenCV and numpy only, and installs nothing (PYTHONPATH=.). PyAV is
# blocked on purpose (a stand-in module that refuses to import comes first on the path), so a
# benchmark that needs it fails here as it would on a machine without it; BLOCK_MODULES (default
# "av") names the modules to block, e.g. "av flwr hydra" to act like a machine without them. The
# aggregation benchmark needs only numpy (fedvssl.aggregation has no Flower import).
#
# Steps, in order, each under its own timeout inside an overall budget (BUDGET_S seconds, default
# 480): environment, train_step (fp32, bf16, bf16 + channels_last_3d inputs, and with the weights
# in channels_last_3d too), the UCF-like data, pipeline, client_epoch (the model alone, then
# whole epochs with decoding and augmentation in the workers and on the GPU, two epochs per
# lasting loader), client_round (5 clients x 400 videos, one client process at a time and four
# side by side on the GPU, two rounds each), aggregation, and last the torch.compile variant of
# train_step (beside bf16_cl again, for a ratio from one run), which gets whatever time is left
# (compiling is the one step whose length is hard to bound). A failing or timed-out step is recorded in suite.json and the
# suite goes on; it always exits 0. Files in $OUT: env.txt, suite.json, suite.log,
# train_step.json, pipeline.json, client_epoch.json, client_round.json, aggregation.json,
# train_step_compile.json.
set -u

OUT=${OUT:?set OUT to the folder for the results}
[ -f benchmarks/gpu_suite.sh ] || { echo "run this from the repository root" >&2; exit 2; }
SMOKE=${SMOKE:-0}
BUDGET_S=${BUDGET_S:-480}
PY=${PYTHON:-$(command -v python || command -v python3)}
export PY
START=$(date +%s)
DEADLINE=$((START + BUDGET_S))

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_suite.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/blocked"
for module in ${BLOCK_MODULES:-av}; do
    echo "raise ImportError('$module is blocked: the benchmarks must run without it')" \
        >"$WORK/blocked/$module.py"
done
export PYTHONPATH="$WORK/blocked:$PWD"
export PYTHONUNBUFFERED=1
: >"$WORK/steps.tsv"
: >"$OUT/suite.log"

if [ "$SMOKE" = 1 ]; then
    TRAIN=(--width 16 --batch 2 --clip-len 8 --crop-size 32 --steps 2 --warmup 1 --threads 1)
    DATA=(--videos 6 --frames 24 --size 96 72)
    PIPE=(--crop-size 32 --clip-len 8 --workers 0 1 2 --clips 4 --batch 2 --batches 2)
    EPOCH=(--width 16 --batch 2 --crop-size 32 --clip-len 8 --workers 0 1 --threads 1
        --augment cpu device --epochs 2 --model-steps 2)
    ROUND=(--width 8 --batch 2 --crop-size 32 --clip-len 8 --clients 2 --per-client 3
        --parallel 1 2 --rounds 2 --workers 0)
    AGG=(--clients 2 3 --repeats 1 --distinct 2)
    CAPS=(30 30 30 60 90 60)
else
    TRAIN=(--width 64 --batch 32 --clip-len 16 --crop-size 112 --steps 20 --warmup 5)
    DATA=(--videos 240 --frames 60 --size 320 240)
    PIPE=(--crop-size 112 --clip-len 16 --workers 0 1 4 8 14 --clips 64 --batch 32 --batches 6)
    EPOCH=(--width 64 --batch 32 --crop-size 112 --clip-len 16 --workers 4 14 --repeat 2
        --precision bf16_cl --augment cpu device --epochs 2 --model-steps 20)
    ROUND=(--width 64 --batch 32 --crop-size 112 --clip-len 16 --clients 5 --per-client 400
        --parallel 1 4 --rounds 2 --workers 3 --augment device)
    AGG=(--clients 10 100 --repeats 3)
    CAPS=(75 45 60 110 150 45)
fi

# Rewrite suite.json from the steps so far (atomically: a reader never sees half a file).
write_summary() {
    "$PY" - "$WORK/steps.tsv" "$WORK" "$OUT/suite.json" "$SMOKE" "$BUDGET_S" <<'EOF'
import json, os, sys, time
steps_file, work, target, smoke, budget = sys.argv[1:]
steps = []
for line in open(steps_file):
    name, rc, seconds, limit = line.split()
    rc = int(rc)
    status = {0: "ok", -1: "skipped: no time left", 124: "timeout", 137: "timeout"}.get(rc, "failed")
    step = {"step": name, "status": status, "rc": rc, "seconds": int(seconds), "limit_s": int(limit)}
    log = os.path.join(work, name + ".log")
    if rc != 0 and os.path.exists(log):
        step["log_tail"] = open(log, errors="replace").read().splitlines()[-15:]
    steps.append(step)
report = {"suite": "gpu_suite", "smoke": smoke == "1", "budget_s": int(budget), "steps": steps,
          "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
tmp = target + ".tmp"
with open(tmp, "w") as f:
    f.write(json.dumps(report, indent=2) + "\n")
os.replace(tmp, target)
EOF
}

# step NAME CAP COMMAND...: run COMMAND with at most CAP seconds (less if the budget is short).
step() {
    local name=$1 cap=$2 left began rc
    shift 2
    left=$((DEADLINE - $(date +%s)))
    [ "$cap" -gt "$left" ] && cap=$left
    began=$(date +%s)
    if [ "$cap" -lt 10 ]; then
        rc=-1
        echo "budget spent: $name not run" >"$WORK/$name.log"
    else
        timeout -k 10 "$cap" "$@" >"$WORK/$name.log" 2>&1
        rc=$?
    fi
    printf '%s %s %s %s\n' "$name" "$rc" "$(($(date +%s) - began))" "$cap" >>"$WORK/steps.tsv"
    { echo "===== $name (rc $rc, limit ${cap}s): $*"; cat "$WORK/$name.log"; } >>"$OUT/suite.log"
    echo "[suite] $name: rc $rc in $(($(date +%s) - began)) s (limit $cap s)"
    write_summary
}

environment() {
    nvidia-smi || echo "nvidia-smi: not available"
    echo "cpus: $(nproc)"
    free -g || true
    df -h /dev/shm || true  # DataLoader workers hand batches over through shared memory
    "$PY" -c '
import platform, cv2, numpy, torch, torchvision
print("python", platform.python_version(), "| torch", torch.__version__, "| torchvision",
      torchvision.__version__, "| opencv", cv2.__version__, "| numpy", numpy.__version__)
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(), "| cudnn",
      torch.backends.cudnn.version(), "| torch threads", torch.get_num_threads())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0))
for name in ("av", "flwr", "hydra"):
    try:
        __import__(name)
        print(name, "importable")
    except ImportError as err:
        print(name, "not importable:", err)
'
}

export -f environment
step environment 20 bash -c environment
cp "$WORK/environment.log" "$OUT/env.txt"
cat "$OUT/env.txt"
step train_step "${CAPS[0]}" "$PY" -m benchmarks.train_step "${TRAIN[@]}" \
    --variants fp32 bf16 bf16_cl bf16_cl_model --output "$OUT/train_step.json"
step data "${CAPS[1]}" "$PY" -m benchmarks.pipeline "${DATA[@]}" --data "$WORK/ucf_like" \
    --generate-only
step pipeline "${CAPS[2]}" "$PY" -m benchmarks.pipeline "${DATA[@]}" --data "$WORK/ucf_like" \
    "${PIPE[@]}" --output "$OUT/pipeline.json"
step client_epoch "${CAPS[3]}" "$PY" -m benchmarks.client_epoch "${DATA[@]}" \
    --data "$WORK/ucf_like" "${EPOCH[@]}" --output "$OUT/client_epoch.json"
step client_round "${CAPS[4]}" "$PY" -m benchmarks.client_round "${DATA[@]}" \
    --data "$WORK/ucf_like" "${ROUND[@]}" --output "$OUT/client_round.json"
step aggregation "${CAPS[5]}" "$PY" -m benchmarks.aggregation "${AGG[@]}" \
    --output "$OUT/aggregation.json"
step train_step_compile $((DEADLINE - $(date +%s))) "$PY" -m benchmarks.train_step "${TRAIN[@]}" \
    --variants bf16_cl compile --output "$OUT/train_step_compile.json"

echo "[suite] done in $(($(date +%s) - START)) s; summary:"
cat "$OUT/suite.json"
exit 0
