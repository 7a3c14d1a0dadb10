#!/usr/bin/env bash
# What only a GPU can tell, in one pass of 10 minutes at most; JSON results go to $OUT.
#
#   OUT=DIR bash benchmarks/gpu_suite.sh           # from the repository root, on the GPU machine
#   SMOKE=1 OUT=DIR bash benchmarks/gpu_suite.sh   # tiny sizes on any machine (CPU: a few minutes)
#   EXTRAS=1 OUT=DIR bash benchmarks/gpu_suite.sh  # then the throughput benchmarks, if time is left
#
# The test suite runs every CUDA branch on the CPU under a pretend-CUDA harness
# (tests/pretend_cuda.py); this suite checks what the harness cannot, on a real GPU. Steps, in
# order, each under its own timeout inside an overall budget (BUDGET_S seconds, default 600):
#
#   environment    nvidia-smi, CPUs, memory, library versions, which optional modules import
#   data           a UCF-like set of 320x240 frame zips (benchmarks.pipeline, no PyAV needed)
#   cuda_checks    nvJPEG against the CPU decoder and the device path against the CPU path, a
#                  cuDNN bf16 + channels_last_3d step against fp32, the synchronising calls per
#                  training step, nvJPEG's stream race, a compile=true client round
#                  (benchmarks.cuda_checks: cuda_checks.json)
#   client_epoch   the model alone, then whole client epochs with augment=cpu and augment=device
#                  (client_epoch.json; the target: an epoch at 0.8 of the model's own rate)
#   synthetic      the synthetic set prepared at short side 112 (needs the package: PyAV, Hydra)
#   federated      python -m fedvssl.main, 2 rounds, 2 clients sharing the GPU (num_gpus 0.5;
#                  needs Flower, Ray, Hydra): federated.json from its metrics.json
#   ctp_learning   CtP at full size (width 64, 16x112x112, batch 32, 2,000 steps), recipes
#                  reference and marked, each within a share of the time left (needs Hydra)
#   speed_clips    Speed's clip budget: pretext=speed, batch 16, up to 8,000 steps, in the time
#                  left (benchmarks.pretext_learning; needs Hydra)
#   targets        targets.json: each target, its number and whether it is met
#
# With EXTRAS=1 the throughput benchmarks follow, in what time is left: train_step (fp32, bf16,
# bf16 + channels_last_3d), pipeline, client_round (5 clients x 400 videos, one client process
# at a time and four side by side), aggregation and train_step_compile.
#
# It installs nothing and needs PyTorch, torchvision, OpenCV and numpy (PYTHONPATH=.). PyAV is
# blocked for the benchmarks that must run without it (a stand-in module that refuses to import
# comes first on their path; BLOCK_MODULES, default "av", names the blocked modules); the steps
# that need the whole package (synthetic, federated, ctp_learning, speed_clips) run without the
# block when PyAV, Hydra, Flower and Ray import (pip install -e .), and are recorded as skipped
# otherwise. A failing, timed-out or skipped step is recorded in suite.json (status, exit code,
# seconds, limit, the last lines of its output) and the suite goes on; it always exits 0. Every
# step's command and output are in suite.log.
set -u

OUT=${OUT:?set OUT to the folder for the results}
[ -f benchmarks/gpu_suite.sh ] || { echo "run this from the repository root" >&2; exit 2; }
SMOKE=${SMOKE:-0}
EXTRAS=${EXTRAS:-0}
BUDGET_S=${BUDGET_S:-600}
PY=${PYTHON:-$(command -v python || command -v python3)}
export PY
START=$(date +%s)
DEADLINE=$((START + BUDGET_S))

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_suite.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/blocked" "$WORK/blocked_package"
for module in ${BLOCK_MODULES:-av}; do
    echo "raise ImportError('$module is blocked: the benchmarks must run without it')" \
        >"$WORK/blocked/$module.py"
    # the package's own steps need PyAV; any other blocked module is blocked for them too
    [ "$module" = av ] || cp "$WORK/blocked/$module.py" "$WORK/blocked_package/"
done
export PYTHONPATH="$WORK/blocked:$PWD"
PACKAGE_PATH="$WORK/blocked_package:$PWD"
export PYTHONUNBUFFERED=1
: >"$WORK/steps.tsv"
: >"$OUT/suite.log"

if [ "$SMOKE" = 1 ]; then
    DATA=(--videos 6 --frames 24 --size 96 72)
    CHECKS=(--videos 6 --frames 24 --size 96 72)
    EPOCH=(--width 16 --batch 2 --crop-size 32 --clip-len 8 --workers 0 1 --threads 1
        --augment cpu device --epochs 2 --model-steps 2)
    SYNTHETIC=(--synthetic-scale 0.1 --short-side 48 --num-clients 2 --workers 2)
    FEDERATED=(experiment=smoke client_resources.num_gpus=0 client_resources.num_cpus=1)
    CTP=(--width 16 --crop-size 32 --clip-len 8 --batch 2 --steps 4 --window 2 --workers 0)
    SPEED=(--steps 4 --window 2 --workers 0 --runs "pretext=speed batch_size=2 crop_size=32")
    TRAIN=(--width 16 --batch 2 --clip-len 8 --crop-size 32 --steps 2 --warmup 1 --threads 1)
    PIPE=(--crop-size 32 --clip-len 8 --workers 0 1 --clips 4 --batch 2 --batches 2)
    ROUND=(--width 8 --batch 2 --crop-size 32 --clip-len 8 --clients 2 --per-client 3
        --parallel 1 2 --rounds 2 --workers 0)
    AGG=(--clients 2 3 --repeats 1 --distinct 2)
    CAPS=(20 30 60 60 60 120)
else
    DATA=(--videos 240 --frames 60 --size 320 240)
    CHECKS=(--videos 24 --frames 40 --size 320 240)
    EPOCH=(--width 64 --batch 32 --crop-size 112 --clip-len 16 --workers 14 --repeat 2
        --precision bf16_cl --augment cpu device --epochs 2 --model-steps 20)
    SYNTHETIC=(--short-side 112 --num-clients 2 --workers 8)
    FEDERATED=(pool_size=2 rounds=2 workers=3 client_resources.num_gpus=0.5
        client_resources.num_cpus=6 progress=false)
    CTP=(--width 64 --crop-size 112 --clip-len 16 --batch 32 --steps 2000 --window 100
        --workers 14)
    SPEED=(--steps 8000 --window 500 --workers 14 --runs "pretext=speed batch_size=16")
    TRAIN=(--width 64 --batch 32 --clip-len 16 --crop-size 112 --steps 20 --warmup 5)
    PIPE=(--crop-size 112 --clip-len 16 --workers 0 4 14 --clips 64 --batch 32 --batches 6)
    ROUND=(--width 64 --batch 32 --crop-size 112 --clip-len 16 --clients 5 --per-client 400
        --parallel 1 4 --rounds 2 --workers 3 --augment device)
    AGG=(--clients 10 100 --repeats 3)
    CAPS=(20 45 150 120 90 120)
fi
# CAPS: environment data cuda_checks client_epoch synthetic federated (the learning steps share
# what is left of the budget)

# Rewrite suite.json from the steps so far (atomically: a reader never sees half a file).
write_summary() {
    "$PY" - "$WORK/steps.tsv" "$WORK" "$OUT/suite.json" "$SMOKE" "$BUDGET_S" <<'EOF'
import json, os, sys, time
steps_file, work, target, smoke, budget = sys.argv[1:]
statuses = {0: "ok", -1: "skipped: no time left", -2: "skipped: needs the whole package (pip install -e .)",
            124: "timeout", 137: "timeout"}
steps = []
for line in open(steps_file):
    name, rc, seconds, limit = line.split()
    rc = int(rc)
    step = {"step": name, "status": statuses.get(rc, "failed"), "rc": rc,
            "seconds": int(seconds), "limit_s": int(limit)}
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

left() { echo $((DEADLINE - $(date +%s))); }

# step NAME CAP COMMAND...: run COMMAND with at most CAP seconds (less if the budget is short).
step() {
    local name=$1 cap=$2 began rc
    shift 2
    [ "$cap" -gt "$(left)" ] && cap=$(left)
    began=$(date +%s)
    if [ "$cap" -lt 10 ]; then
        rc=-1
        echo "budget spent: $name not run" >"$WORK/$name.log"
    else
        timeout -k 10 "$cap" "$@" >"$WORK/$name.log" 2>&1
        rc=$?
    fi
    record "$name" "$rc" "$began" "$cap" "$*"
}

# package_step NAME CAP COMMAND...: a step that needs the whole package, run without the block.
package_step() {
    local name=$1
    if [ "$HAVE_PACKAGE" != 1 ]; then
        echo "needs PyAV, Hydra, Flower and Ray (pip install -e .): $MISSING" >"$WORK/$name.log"
        record "$name" -2 "$(date +%s)" 0 "(not run)"
        return
    fi
    step "$@"
}

record() {
    printf '%s %s %s %s\n' "$1" "$2" "$(($(date +%s) - $3))" "$4" >>"$WORK/steps.tsv"
    { echo "===== $1 (rc $2, limit ${4}s): $5"; cat "$WORK/$1.log"; } >>"$OUT/suite.log"
    echo "[suite] $1: rc $2 in $(($(date +%s) - $3)) s (limit $4 s)"
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
'
    PYTHONPATH="$PACKAGE_PATH" "$PY" -c '
for name in ("av", "flwr", "hydra", "ray"):
    try:
        __import__(name)
        print(name, "importable")
    except ImportError as err:
        print(name, "not importable:", err)
'
}

export PACKAGE_PATH
export -f environment
step environment "${CAPS[0]}" bash -c environment
cp "$WORK/environment.log" "$OUT/env.txt"
cat "$OUT/env.txt"
MISSING=$(PYTHONPATH="$PACKAGE_PATH" "$PY" -c '
missing = []
for name in ("av", "hydra", "flwr", "ray"):
    try:
        __import__(name)
    except ImportError:
        missing.append(name)
print(" ".join(missing))')
HAVE_PACKAGE=$([ -z "$MISSING" ] && echo 1 || echo 0)

step data "${CAPS[1]}" "$PY" -m benchmarks.pipeline "${DATA[@]}" --data "$WORK/ucf_like" \
    --generate-only
step cuda_checks "${CAPS[2]}" "$PY" -m benchmarks.cuda_checks "${CHECKS[@]}" \
    --data "$WORK/checks_data" --output "$OUT/cuda_checks.json"
step client_epoch "${CAPS[3]}" "$PY" -m benchmarks.client_epoch "${DATA[@]}" \
    --data "$WORK/ucf_like" "${EPOCH[@]}" --output "$OUT/client_epoch.json"
PYTHONPATH="$PACKAGE_PATH" package_step synthetic "${CAPS[4]}" "$PY" dataset_preparation.py \
    --dataset synthetic --data-dir "$WORK/synthetic" --quiet "${SYNTHETIC[@]}"

federated() {
    "$PY" -m fedvssl.main "data_dir=$WORK/synthetic" "hydra.run.dir=$WORK/federated" \
        "${FEDERATED[@]}" || return $?
    "$PY" - "$WORK/federated/metrics.json" "$OUT/federated.json" <<'EOF'
import json, sys
rounds = json.load(open(sys.argv[1]))["rounds"]
report = {"rounds": len(rounds),
          "clients_per_round": [len(r["clients"]) for r in rounds],
          "failures": [f for r in rounds for f in r["failures"]],
          "ratio_to_trivial": [r["train_loss"] / r["trivial_loss"] if r["trivial_loss"] else None
                               for r in rounds],
          "seconds": [r["seconds"] for r in rounds]}
report["ok"] = (report["rounds"] == 2 and report["clients_per_round"] == [2, 2]
                and not report["failures"])
json.dump(report, open(sys.argv[2], "w"), indent=2)
print(report)
sys.exit(0 if report["ok"] else 1)
EOF
}
export -f federated
export WORK OUT
export FEDERATED_ARGS="${FEDERATED[*]}"
PYTHONPATH="$PACKAGE_PATH" package_step federated "${CAPS[5]}" bash -c \
    'FEDERATED=($FEDERATED_ARGS); federated'

# The learning checks share what is left: CtP's two recipes up to 150 s each, keeping 90 s for
# Speed; each run stops at its share (the JSON has the steps it reached).
CTP_EACH=$(( ($(left) - 90 - 60) / 2 ))
[ "$CTP_EACH" -gt 150 ] && CTP_EACH=150
[ "$CTP_EACH" -lt 10 ] && CTP_EACH=10
PYTHONPATH="$PACKAGE_PATH" package_step ctp_learning $((2 * CTP_EACH + 60)) \
    "$PY" -m benchmarks.ctp_learning --dataset-root "$WORK/synthetic/synthetic" "${CTP[@]}" \
    --recipes reference marked --max-seconds "$CTP_EACH" --output "$OUT/ctp_learning.json"
SPEED_S=$(( $(left) - 40 ))
[ "$SPEED_S" -lt 10 ] && SPEED_S=10
DEVICE=$([ "$SMOKE" = 1 ] && echo cpu || echo cuda)
PYTHONPATH="$PACKAGE_PATH" package_step speed_clips "$(left)" "$PY" -m benchmarks.pretext_learning \
    --dataset-root "$WORK/synthetic/synthetic" --device "$DEVICE" "${SPEED[@]}" \
    --max-seconds "$SPEED_S" --output "$OUT/speed_clips.json"

step targets 20 "$PY" - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None
targets = []
epoch = load("client_epoch.json")
if epoch:
    later = [r for r in epoch["results"] if r["augment"] == "device" and r["epoch"] > 1]
    best = max((r["of_model_only"] for r in later), default=None)
    targets.append({"target": "a client epoch (augment=device) at 0.8 of the model's own rate",
                    "measured": best, "met": best is not None and best >= 0.8})
checks = load("cuda_checks.json")
for name, check in (checks or {}).get("checks", {}).items():
    skipped = check.get("skipped")
    targets.append({"target": f"cuda_checks: {name}", "measured": skipped or check.get("ok"),
                    "met": None if skipped else check.get("ok") is True})
federated = load("federated.json")
if federated:
    targets.append({"target": "2 federated rounds, 2 clients sharing the GPU, no failure",
                    "measured": federated["clients_per_round"], "met": federated["ok"]})
for name in ("ctp_learning.json", "speed_clips.json"):
    report = load(name)
    for run in (report or {}).get("runs", []):
        windows = run.get("windows") or [{}]
        targets.append({"target": f"{name}: {run.get('recipe') or ' '.join(run['overrides'])}",
                        "measured": {"steps": windows[-1].get("step"),
                                     "ratio": windows[-1].get("ratio")}, "met": None})
tmp = os.path.join(out, "targets.json.tmp")
json.dump({"targets": targets}, open(tmp, "w"), indent=2)
os.replace(tmp, os.path.join(out, "targets.json"))
print(json.dumps(targets, indent=1))
EOF

if [ "$EXTRAS" = 1 ]; then
    step train_step 90 "$PY" -m benchmarks.train_step "${TRAIN[@]}" \
        --variants fp32 bf16 bf16_cl --output "$OUT/train_step.json"
    step pipeline 60 "$PY" -m benchmarks.pipeline "${DATA[@]}" --data "$WORK/ucf_like" \
        "${PIPE[@]}" --output "$OUT/pipeline.json"
    step client_round 150 "$PY" -m benchmarks.client_round "${DATA[@]}" \
        --data "$WORK/ucf_like" "${ROUND[@]}" --output "$OUT/client_round.json"
    step aggregation 45 "$PY" -m benchmarks.aggregation "${AGG[@]}" \
        --output "$OUT/aggregation.json"
    step train_step_compile "$(left)" "$PY" -m benchmarks.train_step "${TRAIN[@]}" \
        --variants bf16_cl compile --output "$OUT/train_step_compile.json"
fi

echo "[suite] done in $(($(date +%s) - START)) s; summary:"
cat "$OUT/suite.json"
exit 0
