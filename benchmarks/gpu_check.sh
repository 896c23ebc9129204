#!/usr/bin/env bash
# One prepared acceptance run for a lent GPU (issue 23): the GPU test tier, then the figures benchmarks/RESULTS.md
# lists as not measured. Each step runs under its own time limit, so a slow one cannot starve the rest; the limits,
# and the seconds `timeout` waits before it kills a step that ignored its TERM, add up to less than 9 minutes.
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine, from anywhere in the project, .whl/ carried
#   bash benchmarks/gpu_check.sh --dry-run   # print each step and its time limit, run nothing
#
# Everything lands in $OUT (the device tool's folder that comes back; default results/gpu-check): figures.jsonl (a
# JSON line per step and per measurement), gpu-tier.xml (pytest's report of the tier), logs/<step>.log, and
# summary.txt, which benchmarks/gpu_summary.py reads from them and which is printed at the end.
#
# The GPU image has torch, torchvision, timm, pandas, matplotlib and scikit-learn. Fill .whl/ with the rest on the
# development machine: ../shared/tools/gpu-wheels.sh (Ray, Optuna), then what the check needs besides:
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl pytest pluggy iniconfig pygments moocore cffi pycparser platformdirs
# The preflight step names any module still missing.
set -uo pipefail

usage="usage: bash benchmarks/gpu_check.sh [--dry-run]"
dry_run=0
for arg in "$@"; do
    case $arg in
        --dry-run) dry_run=1 ;;
        -h | --help) echo "$usage"; exit 0 ;;
        *) echo "gpu_check.sh: error: unknown argument $arg: expected --dry-run or --help" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.." || exit 1
root=$PWD
out=${OUT:-$root/results/gpu-check}
python=${PYTHON:-python3}
figures=$out/figures.jsonl
work="<a temporary folder>"
kill_after=3
failed=0
total=0

# step NAME LIMIT COMMAND...: COMMAND under `timeout LIMIT` (seconds), its output in logs/NAME.log, its outcome a
# line of figures.jsonl; with --dry-run only the line saying what would run.
step() {
    local name=$1 limit=$2
    shift 2
    total=$((total + limit + kill_after))
    if ((dry_run)); then
        printf 'step %-16s limit %3d s: %s\n' "$name" "$limit" "$*"
        return 0
    fi
    local started=$SECONDS code took
    timeout --kill-after="$kill_after" "$limit" "$@" >"$out/logs/$name.log" 2>&1
    code=$?
    took=$((SECONDS - started))
    printf '{"step": "%s", "limit_s": %d, "seconds": %d, "exit": %d}\n' "$name" "$limit" "$took" "$code" >>"$figures"
    echo "step $name: exit $code after $took s of $limit"
    ((code == 0)) || failed=1
    return "$code"
}

if ((!dry_run)); then
    if [[ -e $figures ]]; then
        echo "gpu_check.sh: error: $out already holds figures.jsonl: expected a new folder (OUT=DIR)" >&2
        exit 2
    fi
    mkdir -p "$out/logs"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
fi

# The image lacks this project's install: the repository root goes on the path, with the wheels from .whl/.
site=""
if ((dry_run)) || compgen -G ".whl/*.whl" >/dev/null; then
    step wheels 20 "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && site=/tmp/site:
fi
export PYTHONPATH=$site$root${PYTHONPATH:+:$PYTHONPATH}

# 25 s: importing torch on a loaded machine (the CPU tests run this step too) takes several seconds.
step preflight 25 "$python" benchmarks/gpu_figures.py preflight --record "$figures"
if (($? == 3)); then
    echo "gpu_check.sh: no CUDA device is visible here: the GPU steps are not run" >&2
else
    # Unbuffered and verbose: a tier stopped at its limit still leaves each finished test's outcome in its log.
    step tier 115 env PYTHONUNBUFFERED=1 "$python" -m pytest tests/drills/test_gpu.py -m gpu -v -rs -p no:cacheprovider \
        --junitxml="$out/gpu-tier.xml"
    step throughput 100 "$python" benchmarks/train_throughput.py --device cuda --compile both --img-size 224 \
        --batch-size 256 --steps 15 --rounds 3 --record "$figures"
    step trials_per_hour 75 "$python" benchmarks/gpu_figures.py trials-per-hour --record "$figures" \
        --work "$work/search"
    step compile_payback 70 "$python" benchmarks/gpu_figures.py compile-payback --compiled-timeout 45 \
        --record "$figures" --work "$work/compile"
    step retrain_epoch 35 "$python" benchmarks/gpu_figures.py retrain-epoch --record "$figures" \
        --work "$work/retrain"
    step data_path 50 "$python" benchmarks/data_path.py --device cuda --sizes 64 --record "$figures"
fi
step summary 5 "$python" benchmarks/gpu_summary.py "$out"
if ((dry_run)); then
    echo "at most $total s in all, every limit and kill wait included"
else
    cp "$out/logs/summary.log" "$out/summary.txt"
    echo
    cat "$out/summary.txt"
fi
exit "$failed"
