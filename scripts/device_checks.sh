#!/usr/bin/env bash
# The GPU checks (MAML-TRPO on --device cuda and its speed, the few-shot task batch on the GPU,
# on-device envs, RL², MJX) as one prepared run for a GPU machine that may be available only
# for a short time: every step has its own time limit and the results are packed after each
# one, so a run cut short still returns what it measured.
#
#   bash scripts/device_checks.sh prepare [OMNIGLOT_DIR]     # here, where pip reaches PyPI
#   bash scripts/device_checks.sh run    # on the GPU machine, with .device/ copied there:
#                                        # group A (tests maml fewshot sampler torchenvs),
#                                        # at most 555 s of step limits
#   at once after it, on the still-warm machine, if 4+ minutes are left:
#       "bash scripts/device_checks.sh run rl2 mjx"   # group B, at most 240 s
#
# The GPU machine has Python 3.12 with torch (CUDA), JAX (CUDA), numpy, scipy, pandas,
# matplotlib, pillow, tqdm, tensorboard and pytest, but neither gymnasium, MuJoCo nor
# Stable-Baselines3, and no network. `prepare` downloads those wheels (CPython 3.12,
# manylinux x86-64, the versions pinned below) into .device/whl and copies the Omniglot zips
# into .device/omniglot (.device/ is git-ignored; about 35 MB with the repo's 5 MB). `run` installs the wheels with --no-deps into /tmp/site, puts a copy of the
# package in its installed layout (metarl/, envs/ → metarl.envs, agents/ → metarl.agents) on
# PYTHONPATH, works from /tmp so that the checkout's metarl/ does not shadow it, and writes
# $OUT/results.tgz (benchmark outputs and one log per step) and $OUT/steps.log.
#
# Unpack the results here with `tar xzf results.tgz -C /tmp/device-results` and commit the
# benchmark files whose names end in _cuda with the device named (they record it).
#
# Dry run of the plumbing on this CPU machine (small sizes, nothing installed):
#   DEVICE=cpu QUICK=1 SKIP_INSTALL=1 PYTHON=.venv/bin/python OUT=/tmp/dc bash scripts/device_checks.sh run
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/device-out}
QUICK=${QUICK:-0}
WHEELS=(gymnasium==1.4.0 farama-notifications==0.0.6 mujoco==4.0.0 mujoco-core==4.0.0
        glfw==2.11.0 PyOpenGL==3.1.10 stable-baselines3==2.9.2 mujoco-mjx==3.17.0
        trimesh==5.2.0)

prepare() {
    local omniglot=${1:-$REPO/../shared/data/omniglot}
    mkdir -p "$REPO/.device/whl" "$REPO/.device/omniglot"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$REPO/.device/whl" "${WHEELS[@]}" || return 1
    for f in images_background.zip images_evaluation.zip; do
        if [ ! -f "$omniglot/$f" ]; then
            echo "no $omniglot/$f: pass the folder with Omniglot's zips (original layout)" >&2
            return 1
        fi
        cp "$omniglot/$f" "$REPO/.device/omniglot/"
    done
    du -sh "$REPO/.device"
}

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/steps.log"; }

pack() { tar czf "$OUT/results.tgz" -C "$RES" . 2>/dev/null; }

# step NAME LIMIT_S COMMAND...: runs one check under its own limit, logs it, packs results.
step() {
    local name=$1 limit=$2
    shift 2
    log "start $name (limit ${limit} s)"
    local t0=$SECONDS
    timeout -k 5 "$limit" "$@" > "$RES/$name.log" 2>&1
    local rc=$?
    log "end $name: rc $rc$([ $rc -eq 124 ] && echo ' (time limit)') in $((SECONDS - t0)) s"
    pack
}

setup() {
    mkdir -p "$OUT"
    RES=$(mktemp -d /tmp/device-results.XXXX)
    export PYTHONUNBUFFERED=1 MUJOCO_GL=egl
    if [ "${SKIP_INSTALL:-0}" != 1 ]; then
        if ! ls "$REPO"/.device/whl/*.whl > /dev/null 2>&1; then
            log "no wheels in .device/whl: run 'bash scripts/device_checks.sh prepare' here and carry .device"
            exit 1
        fi
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$REPO"/.device/whl/*.whl || exit 1
        rm -rf /tmp/pkg && mkdir -p /tmp/pkg
        cp -r "$REPO/metarl" /tmp/pkg/metarl
        cp -r "$REPO/envs" /tmp/pkg/metarl/envs
        cp -r "$REPO/agents" /tmp/pkg/metarl/agents
        export PYTHONPATH=/tmp/pkg:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    cd /tmp || exit 1
    {
        date -u
        nvidia-smi 2>&1 || echo "no nvidia-smi"
        "$PYTHON" -c "import sys, torch, numpy, metarl, mujoco, gymnasium; print(sys.version); \
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''); \
print('numpy', numpy.__version__, 'mujoco', mujoco.__version__, 'gymnasium', \
gymnasium.__version__, 'metarl', metarl.__file__)"
        nproc
    } > "$RES/machine.txt" 2>&1
    log "machine: $(grep -m1 -E 'torch|Error' "$RES/machine.txt")"
}

run() {
    setup
    local groups=("$@")
    [ ${#groups[@]} -eq 0 ] && groups=(tests maml fewshot sampler torchenvs)
    local it=5 q=0
    [ "$QUICK" = 1 ] && it=1 && q=1
    for g in "${groups[@]}"; do
        case $g in
        tests) # CUDA paths of every agent, the device meta-step against the CPU's
            step tests 110 "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts="-ra" \
                "$REPO/tests/test_devices.py" "$REPO/tests/test_torch_envs.py" ;;
        maml) # s/meta-iteration on the 2D-navigation paper preset and HalfCheetahVel
            step maml 130 "$PYTHON" "$REPO/scripts/bench_maml_speed.py" --device "$DEVICE" \
                --iterations "$it" --reference-iterations 0 --cheetah-iterations 1 \
                --threads 4 --out "maml_speed_$DEVICE"
            cp "$REPO/benchmarks/maml_speed_$DEVICE".* "$RES/" 2>/dev/null; pack ;;
        fewshot) # MAML 5-way 1-shot Omniglot, meta-batch 32: vmap / fold vs the task loop
            step fewshot 170 "$PYTHON" "$REPO/scripts/bench_fewshot_vmap.py" --device "$DEVICE" \
                --omniglot "$REPO/.device/omniglot" --iterations "$it" \
                --out "$RES/fewshot_vmap_$DEVICE.md" ;;
        sampler) # MAML-TRPO with the envs on the device vs the native NumPy sampler
            step sampler 70 "$PYTHON" "$REPO/scripts/bench_maml_sampler.py" --device "$DEVICE" \
                --iterations $((it > 3 ? 3 : it)) --out "$RES/maml_sampler_$DEVICE" ;;
        torchenvs) # 2D-navigation env-steps/s with the policy in the loop
            step torchenvs 45 "$PYTHON" "$REPO/scripts/bench_torch_envs.py" --device "$DEVICE" \
                --out "$RES/torch_envs_$DEVICE.md" ;;
        rl2) # RL² env-steps/s, collection and PPO update
            step rl2 70 "$PYTHON" "$REPO/scripts/bench_rl2_throughput.py" --device "$DEVICE" \
                --iterations $((it > 2 ? 2 : it)) $([ "$q" = 1 ] && echo --num-trials 8) \
                --out "$RES/rl2_$DEVICE" ;;
        mjx) # HalfCheetahVel on MJX (JAX's GPU) vs native MuJoCo on the CPU
            step mjx 170 "$PYTHON" "$REPO/scripts/bench_mujoco_mjx.py" --families HalfCheetahVel \
                --num-envs 256 4096 --steps 50 --max-seconds 150 --nthread 8 \
                --out "$RES/mujoco_mjx_$DEVICE" ;;
        *) log "unknown group $g (tests maml fewshot sampler torchenvs rl2 mjx)"; exit 2 ;;
        esac
    done
    cp "$OUT/steps.log" "$RES/" && pack
    log "done; results in $OUT/results.tgz"
}

case ${1:-} in
prepare) shift; prepare "$@" ;;
run) shift; run "$@" ;;
*) sed -n '2,/^set /p' "$0" | grep '^#'; exit 2 ;;
esac
