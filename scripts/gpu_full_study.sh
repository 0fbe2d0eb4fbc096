#!/usr/bin/env bash
# The full study on a lent GPU, one device call at a time (docs/GPU.md has the exact call).
#
#   bash scripts/gpu_full_study.sh [bench] [all | part1 | part2 | probe | EXPERIMENT ...]   (default: all)
#   bash scripts/gpu_full_study.sh --merge DIR      (on this machine, after the call: unpack what came back and
#                                                    render README.md's speed table and report.md again)
#
# On the GPU machine, from the repository root, after the prepare-carry prefix. Inside BUDGET_S seconds:
#  0. merges the previous call's pack kept on this machine, if any (below);
#  1. prints the versions, tests CUDA and decodes the data once, in one Python start (DATA=shared: the JPEG copy in
#     .carry/, recorded as 'shared' in result configs, so results written here match the configs built on the
#     other machine; another DATA is copied there first), and reads from the bench file what steps 2 and 3 would
#     measure with --missing-only (lib.bench.runner_first_step): a step with nothing to do is left out;
#  2. checks the CUDA-graph training step against the eager one: GRAPH_CHECK_MODEL every call (a mismatch
#     stops the call), every study model once per device (a model that differs trains eagerly);
#  3. 'bench': times naive vs fast epochs of BENCH_NAIVE (and BENCH_COMPILE's torch.compile'd too, BENCH_STEP_GRAPH's
#     with the whole step as one CUDA graph), the naive vs
#     fast accuracy of AGREEMENT, a profile of TRACE's step, BOOKKEEPING's per-epoch bookkeeping by part and
#     COMPILE_FAST's compiled fast epochs; always: the fast epoch of every study model and the probe steps that
#     results/bench/<gpu>.json still lacks (the plan below needs them; where CIFAR10_STEP_GRAPH is exported, also
#     the whole-step graph rows of the models it names, around the eager and the compiled model: lib/step_graph.py,
#     an experiment, off unless exported); then picks the models to train
#     torch.compile'd (COMPILE_MODELS, default: where the bench file says a full run is faster that way; with
#     LANES > 1 the plan's process picks, counting what each variant costs in lanes: lib.bench.compile_choice);
#  4. plans the unfinished experiments of the subset that fit the time left (python -m lib bench --plan) and
#     runs them with python -m lib run; every step runs under `timeout`, so the call always ends in time; with
#     REPLAN_MIN_S or more left after them (runs end earlier than planned), plans and runs again, REPLAN times
#     (with lanes, a lane whose runs end early first takes the plan's spare runs that fit the lanes' planned end);
#  5. after every step, packs results/<profile>, results/bench and the profile's figures into $OUT/results.tgz (never
#     checkpoints or runs/), the best checkpoints named in KEEP_CHECKPOINTS into $OUT/checkpoints.tgz.partN
#     (for the figures that need trained weights), and keeps the log in $OUT/log.txt; at the end, torch.compile's
#     cache where this call compiled, into $OUT/inductor-cache.tgz (COMPILE_CACHE, below).
# The pack is also kept on the machine (STATE_DIR, ignored by git, which the device tool keeps between the calls of
# a session), and a next call on the same warm machine merges it into its checkout before anything else
# (GPU_STATE=0: not; a pack older than 30 minutes: not either). The checkout a call gets is the other machine's
# working tree, which lacks the last call's results until they are merged there; so a second call may start at
# once, without that merge in between. --merge (there) and this restore both unpack result files and figures
# over the checkout (a call's are supersets of what it started from) and merge bench files record by record, the
# later measurement of a key winning (lib.bench_merge).
# LANES=N (N > 1) trains N runs at once, one `python -m lib run` each (lib.lanes): the plan spreads the training
# runs of the models that gain over N lanes by their measured slowdowns at N at once ('bench' measures them:
# CONCURRENCY; the other models' runs train alone, after the lanes), under
# NVIDIA MPS where the machine lets this script start its daemon (MPS=0: never), time-sliced otherwise; the
# daemon runs only for the concurrency measurement and a plan with lanes, and is stopped before anything else.
# Checkpoints do not survive the machine: only finished results come back, and a later call skips them. A
# run stopped by its time limit (lib run --time-limit) resumes from its checkpoint in a next call on the same,
# still warm machine (the device tool keeps ignored files between calls); a fresh machine starts it over.
set -uo pipefail  # no -e: a failed step is logged and the next one still runs; packing always happens

cd "$(dirname "$0")/.."

# The GPU machine's python3 has torch; a checkout with the project's environment (a CPU dry run here) uses that.
if [[ -z "${PY:-}" ]]; then
  PY=python3
  [[ -x "${VENV:-.venv}/bin/python" ]] && PY=${VENV:-.venv}/bin/python
fi
STATE_DIR=${STATE_DIR:-build/gpu-state}  # the last pack of a call, kept on the machine for its next call
GPU_STATE=${GPU_STATE:-1}                # 0: a call does not merge the previous call's pack first
# torch.compile's on-disk cache of earlier calls (a fresh machine has none, and a compiled CANet run pays 40-70 s
# for its compile there): unpacked into TORCHINDUCTOR_CACHE_DIR before step 1 where the file is there; a call that
# compiled brings its cache back as inductor-cache.tgz, which --merge puts here, so that the next session's calls
# carry it with .carry/ (empty: neither).
COMPILE_CACHE=${COMPILE_CACHE-.carry/inductor-cache.tgz}
COMPILE_CACHE_MAX_MIB=${COMPILE_CACHE_MAX_MIB:-15}  # the cache comes back, and is kept, only up to this size
[[ "$COMPILE_CACHE_MAX_MIB" =~ ^(0|[1-9][0-9]*)$ ]] \
  || { echo "gpu_full_study: COMPILE_CACHE_MAX_MIB=$COMPILE_CACHE_MAX_MIB must be a whole number of MiB" >&2; exit 2; }

# Unpack a results.tgz (or an older call's results.tar) over this checkout, printing 'merged: FILE' per file: bench
# files (results/bench/*.json) merged record by record into an existing copy, every other file replacing its copy.
merge_tar() {  # TAR
  local tmp f rc=0
  tmp=$(mktemp -d) || return 1
  if ! tar -xf "$1" -C "$tmp"; then rm -rf "$tmp"; echo "cannot unpack $1" >&2; return 1; fi
  while IFS= read -r -d '' f; do
    f=${f#./}
    mkdir -p "$(dirname "$f")" || { rc=1; continue; }
    if [[ "$f" =~ ^results/bench/[^/]+[.]json$ && -f "$f" ]]; then
      $PY -m lib.bench_merge "$f" "$tmp/$f" > /dev/null || { rc=1; continue; }
    else
      cp -f "$tmp/$f" "$f" || { rc=1; continue; }
    fi
    echo "merged: $f"
  done < <(cd "$tmp" && find . -type f -print0 | sort -z)
  rm -rf "$tmp"
  return $rc
}

# --merge: torch.compile's cache a call brought back, united with the carried one (a call on a fresh machine started
# from the carried cache, not from the previous call's), the call's files winning, as COMPILE_CACHE; the call's alone
# where the union is over COMPILE_CACHE_MAX_MIB. A damaged archive of the call's is refused, a damaged carried one
# dropped.
merge_compile_cache() {  # TGZ
  local tmp size
  if ! tar -tzf "$1" > /dev/null 2>&1; then
    echo "cannot read $1 (damaged?): torch.compile's cache $COMPILE_CACHE left as it was" >&2
    return 1
  fi
  tmp=$(mktemp -d) || return 1
  mkdir -p "$(dirname "$COMPILE_CACHE")" && tar -xzf "$1" -C "$tmp" || { rm -rf "$tmp"; return 1; }
  if [[ -f "$COMPILE_CACHE" ]] && tar -tzf "$COMPILE_CACHE" > /dev/null 2>&1; then
    tar -xzf "$COMPILE_CACHE" -C "$tmp" --skip-old-files
  fi
  tar -czf "$COMPILE_CACHE.tmp" -C "$tmp" . && size=$(stat -c %s "$COMPILE_CACHE.tmp")
  rm -rf "$tmp"
  [[ -n "${size:-}" ]] || { rm -f "$COMPILE_CACHE.tmp"; return 1; }
  local how="with the carried one"
  if ((size > COMPILE_CACHE_MAX_MIB * 1024 * 1024)); then
    cp -f "$1" "$COMPILE_CACHE.tmp" || return 1
    how="alone: with the carried one it is over COMPILE_CACHE_MAX_MIB"
  fi
  mv -f "$COMPILE_CACHE.tmp" "$COMPILE_CACHE" \
    && echo "merged: $COMPILE_CACHE (torch.compile's cache of the call, $how; $(stat -c %s "$COMPILE_CACHE") bytes;" \
      "the next call carries it in .carry/)"
}

# --merge: the call's log.txt kept as results/bench/logs/<device-slug>-<date>-callN.log, N the day's next number:
# the device as the runner's first step prints it (nvidia-smi's 'NVIDIA H200, 143771 MiB, ...', in the form of
# lib.bench.device_slug), the UTC date the call started (its first line; else today's); unless a log there has the
# same content (the same call merged twice).
save_log() {  # DIR
  local log=$1/log.txt slug day n=1 f
  [[ -f "$log" ]] || { echo "log: no log.txt in $1, none kept"; return 0; }
  mkdir -p results/bench/logs || return 1
  for f in results/bench/logs/*.log; do
    [[ -f "$f" ]] && cmp -s "$f" "$log" && { echo "log: $f already holds this call's log"; return 0; }
  done
  slug=$(grep -m 1 -E '^[^[].*, [0-9]+ MiB, ' "$log" | cut -d, -f1 | tr '[:upper:]' '[:lower:]' \
         | sed -E 's/[^a-z0-9]+/-/g; s/^-+//; s/-+$//')
  day=$(head -n 1 "$log" | grep -oE 'started [0-9]{4}-[0-9]{2}-[0-9]{2}' | cut -d' ' -f2)
  slug=${slug:-unknown-device}
  day=${day:-$(date -u +%Y-%m-%d)}
  while compgen -G "results/bench/logs/$slug-$day-call$n.log" > /dev/null \
        || compgen -G "results/bench/logs/$slug-$day-call$n-*.log" > /dev/null; do
    n=$((n + 1))
  done
  local what="commit it with the results"
  [[ "$slug" == unknown-device ]] && what="no GPU named in it: a dry run's, not to be committed"
  cp "$log" "results/bench/logs/$slug-$day-call$n.log" && echo "log: results/bench/logs/$slug-$day-call$n.log ($what)"
}

usage() {  # the comment block at the top of this file, which says what the script does and how to call it
  sed -n '2,/^set -uo/{/^#/s/^# \{0,1\}//p}' "$0"
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --merge) [[ -n "${2:-}" ]] || { echo "usage: $0 --merge DIR (the folder the device call's files were copied to)" >&2
             exit 2; } ;;
esac
for arg in "$@"; do  # before anything runs (step 0 merges the previous call's pack over the checkout)
  if [[ "$arg" == --merge && "${1:-}" != --merge ]]; then
    echo "gpu_full_study: --merge DIR comes first and alone, not after other arguments" >&2
    exit 2
  elif [[ "$arg" == -* && "$arg" != --merge ]]; then
    echo "gpu_full_study: unknown option $arg: the arguments are [bench] and a study subset (all, part1, part2," \
         "probe, costs or experiment names), or --merge DIR; settings are environment variables (--help)" >&2
    exit 2
  fi
done

if [[ "${1:-}" == "--merge" ]]; then
  dir=$2
  packed=$dir/results.tgz
  [[ -f "$packed" ]] || packed=$dir/results.tar  # the calls of the first sessions packed it uncompressed
  [[ -f "$packed" ]] || { echo "no results.tgz (or results.tar) in $dir" >&2; exit 1; }
  merge_tar "$packed"
  rc=$?  # a file that could not be merged (said above) leaves the others merged; the checkpoints still come
  if compgen -G "$dir/checkpoints.tgz.part*" > /dev/null; then
    cat "$dir"/checkpoints.tgz.part* | tar -xzf - || rc=1  # into checkpoints/ (ignored by git)
  fi
  if [[ -n "$COMPILE_CACHE" && -f "$dir/inductor-cache.tgz" ]]; then
    merge_compile_cache "$dir/inductor-cache.tgz" || rc=1
  fi
  save_log "$dir" || rc=1
  # README.md's speed table and report.md, rendered again from the merged files (python -m lib refresh), so that
  # what is committed agrees with them: with REFRESH_PY, else the project's environment (${VENV:-.venv}, as
  # scripts/setup_env.sh makes it; not made here: PY, the system Python, may lack torch); REFRESH=0: not.
  if [[ "${REFRESH:-1}" != 0 ]]; then
    refresh_py=${REFRESH_PY:-${VENV:-.venv}/bin/python}
    if [[ -z "${REFRESH_PY:-}" && ! -x "$refresh_py" ]]; then
      echo "README.md and report.md not rendered again: no $refresh_py (bash scripts/setup_env.sh makes it, or set" \
           "REFRESH_PY to a Python with requirements.txt), then run python -m lib refresh" >&2
      rc=1
    elif ! $refresh_py -m lib refresh; then
      echo "README.md and report.md not rendered again: run python -m lib refresh once the error above is mended" >&2
      rc=1
    fi
  fi
  exit $rc
fi

BUDGET_S=${BUDGET_S:-570}            # wall clock for this script; the device call's limit is 600 s
PACK_RESERVE_S=${PACK_RESERVE_S:-30}  # kept free for the final packing
KEEP_CHECKPOINTS=${KEEP_CHECKPOINTS:-p1-CANet-s0}  # best checkpoints to bring back (if trained in this call)
PROFILE=${PROFILE:-full}             # only dry runs use another profile
SEEDS=${SEEDS:-0}                    # Part 1 seeds of the plan, e.g. SEEDS="0 1 2" (issue: 3 seeds per model)
DATA_SRC=${DATA_SRC:-.carry/cifar10-jpeg75.tar.gz}
# "shared" finds the JPEG-q75 copy in .carry/ there and in ../shared/data/ here, so the configs (and the
# committed results they are matched against) record the same data source on both machines.
DATA=${DATA:-shared}
BENCH_NAIVE=${BENCH_NAIVE:-"CANet CANet_tiny ResNet18 VGG_A_BN"}
BENCH_COMPILE=${BENCH_COMPILE-"CANet CANet_tiny"}  # 'bench': also time these torch.compile'd (mode: lib.train.
                                                   # compile_mode), against the same naive epoch (empty: none)
BENCH_STEP_GRAPH=${BENCH_STEP_GRAPH-}  # 'bench': also time these with the whole step as one CUDA graph, around the
                                      # eager and the compiled model (lib/step_graph.py, an experiment; empty: none)
COMPILE_FAST=${COMPILE_FAST-"CANet_pro CANet_light"}  # 'bench', last: also time these torch.compile'd, fast
                                                    # epoch only (the biggest runs; empty: none)
COMPILE_MODELS=${COMPILE_MODELS:-auto}  # trained torch.compile'd: auto (where the bench file says it is faster),
                                        # none, or model names
STUDY_MODELS=${STUDY_MODELS:-"CANet_tiny CANet_light CANet ShuffleNetV2 MobileNetV2 ResNet18 ResNet34 VGG11 \
CANet_pro VGG_A VGG_A_BN"}
BENCH_ARGS=${BENCH_ARGS:-}           # extra `python -m lib bench` options (dry runs: --num-train 64 --workers 0)
GRAPH_CHECK_MODEL=${GRAPH_CHECK_MODEL:-CANet_tiny}
AGREEMENT=${AGREEMENT-CANet_tiny}    # 'bench': naive vs fast validation accuracy, 3 epochs x seeds 0 1 (empty: none)
TRACE=${TRACE-CANet_tiny}            # 'bench': profile its step eager, graphed, graphed per path (empty: none)
BOOKKEEPING=${BOOKKEEPING-"CANet_tiny ResNet18"}  # 'bench': their per-epoch bookkeeping part by part, once per
                                                 # device and torch (seconds; no training; empty: none)
PROBE_BENCH=${PROBE_BENCH-"--probe"}  # empty: do not time the probe runs (dry runs on a CPU)
GRAPH_CHECK=${GRAPH_CHECK:-1}        # 0: skip step 2's checks (the second call on a warm, checked machine saves
#                                      ~25 s); models whose recorded check failed still train eagerly
PLAN_MARGIN=${PLAN_MARGIN:-1.2}      # the plan multiplies estimates by this
REPLAN=${REPLAN:-2}                  # plan again (whole runs only) at most this often after the first plan ran,
REPLAN_MIN_S=${REPLAN_MIN_S:-120}    # while this many seconds are left (the shortest H200 job is planned at 76 s,
                                     # after the plan's own reserve below)
PARTIAL=${PARTIAL:-1}                # 0: no run longer than the call either (the session's last call: nothing could
                                     # resume it)
PLAN_S=${PLAN_S:-15}                 # the plan's budget leaves this for the plan itself, plus STOP_RESERVE_S: so
                                     # that a planned run's --time-limit is not shorter than its planned time
STOP_RESERVE_S=${STOP_RESERVE_S:-25}  # a training step's --time-limit ends this long before its timeout (the
                                      # Python start before the limit's clock starts, the last checkpoint)
LANES=${LANES:-1}                    # training processes at once on the GPU (lib.lanes; 1: one run at a time)
MPS=${MPS:-auto}                     # auto: with LANES > 1, try to start an MPS daemon (kernels of the lanes
                                     # overlap); 0: never (the lanes time-slice the GPU)
MPS_START_S=${MPS_START_S:-15}       # what starting MPS costs, kept from the plan's budget where it would start it
                                     # for lanes (the daemon and a test client: a Python start, 5-13 s)
USE_SPARE=${USE_SPARE:-1}            # 0: a lane whose runs end early takes none of the plan's spare runs
# 'bench' with LANES > 1: time these alone and LANES at once (a model not measured trains alone; empty: none), in
# this order: the small models first (most likely to gain), then those whose measurement costs most (compiles,
# CANet_pro's long epochs); a call that runs out of time leaves the rest to the next 'bench' call.
CONCURRENCY=${CONCURRENCY-"CANet_tiny VGG_A VGG_A_BN ResNet18 CANet_light ShuffleNetV2 ResNet34 VGG11 MobileNetV2 \
CANet CANet_pro"}
ALLOW_CPU=${ALLOW_CPU:-0}            # 1: dry run on a machine without CUDA
# Inductor's caches (compiled graphs, Triton kernels) in an ignored folder of the checkout, which the device tool
# keeps between the calls of a session: a model compiled in one call compiles from the cache in the next (and, with
# COMPILE_CACHE, in the next session's calls).
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/build/torchinductor}

# A setting that is not a number would end the script half-way (set -u arithmetic): say so before anything runs.
bad_setting() { echo "gpu_full_study: $1=${!1} $2" >&2; exit 2; }
for name in BUDGET_S PACK_RESERVE_S REPLAN REPLAN_MIN_S PLAN_S STOP_RESERVE_S MPS_START_S; do
  [[ "${!name}" =~ ^(0|[1-9][0-9]*)$ ]] \
    || bad_setting "$name" "must be a whole number of seconds (or rounds) without leading zeros, e.g. $name=60"
done
[[ "$LANES" =~ ^[1-9][0-9]*$ ]] || bad_setting LANES "must be a whole number of training processes, 1 or more"
[[ "$PLAN_MARGIN" =~ ^([0-9]+[.]?[0-9]*|[.][0-9]+)$ && "$PLAN_MARGIN" =~ [1-9] ]] \
  || bad_setting PLAN_MARGIN "must be a number above 0, such as 1.2"
for name in GRAPH_CHECK PARTIAL ALLOW_CPU GPU_STATE USE_SPARE; do
  [[ "${!name}" == 0 || "${!name}" == 1 ]] || bad_setting "$name" "must be 0 or 1"
done
[[ "$MPS" == auto || "$MPS" == 0 ]] || bad_setting MPS "must be auto or 0"
[[ "$PROFILE" =~ ^(smoke|quick|full)$ ]] || bad_setting PROFILE "must be smoke, quick or full (only dry runs use another than full)"
[[ "$SEEDS" =~ ^[[:space:]]*(0|[1-9][0-9]*)([[:space:]]+(0|[1-9][0-9]*))*[[:space:]]*$ ]] \
  || bad_setting SEEDS "must be Part 1 seeds, whole numbers separated by spaces, e.g. SEEDS=\"0 1 2\""
((BUDGET_S > PACK_RESERVE_S + 15)) \
  || bad_setting BUDGET_S "leaves nothing to run: it must be more than PACK_RESERVE_S ($PACK_RESERVE_S s) + 15 s"
[[ "$COMPILE_MODELS" =~ ^[A-Za-z0-9_,[:space:]]+$ ]] \
  || bad_setting COMPILE_MODELS "must be auto, none or model names separated by spaces"
CPU_OK=""                            # set to --allow-cpu-training for a dry run (below)
OUT=${OUT:-$PWD/build/gpu-out}
mkdir -p "$OUT"
PACK_WARNED=0  # pack() has said that the results pack nears the size limit
TMP_DIR=$(mktemp -d) || exit 1  # files between this script's Python steps (not brought back)
CALL_STAMP=$TMP_DIR/call-start  # older than anything this call writes: KEEP_CHECKPOINTS packs only newer ones
touch "$CALL_STAMP"
MPS_PIPE=$TMP_DIR/mps-pipe      # where the MPS daemon of this script listens (only while it runs)
MPS_FAILED=0                    # 1: it could not start in this call; not tried again
CHOOSE=()                       # options of the first plan only: the compile choice is made by it (main)
unset CIFAR10_MPS CIFAR10_LANES  # said by this script only, when it started the daemon or the lanes
start=$SECONDS

log() { echo "[gpu_full_study +$((SECONDS - start))s] $*"; }

# NVIDIA's Multi-Process Service for the lanes: kernels of several processes then run side by side instead of
# time-slicing the GPU. A user-level daemon with its pipe and log under $TMP_DIR; it changes no GPU setting, and
# stop_mps ends it. Without the tool, or when a test client cannot reach it, the lanes simply time-slice.
start_mps() {
  [[ "$MPS" != 0 && -z "$CPU_OK" && "$MPS_FAILED" == 0 ]] || return 1
  [[ -z "${CIFAR10_MPS:-}" ]] || return 0  # already serving
  if ! command -v nvidia-cuda-mps-control > /dev/null; then
    log "MPS: nvidia-cuda-mps-control not found: the lanes time-slice the GPU"; MPS_FAILED=1; return 1
  fi
  local began=$SECONDS
  mkdir -p "$MPS_PIPE" "$TMP_DIR/mps-log"
  export CUDA_MPS_PIPE_DIRECTORY=$MPS_PIPE CUDA_MPS_LOG_DIRECTORY=$TMP_DIR/mps-log
  # Its output away from the log's pipe: a daemon holding it open would keep `tee` (and the call) waiting.
  if nvidia-cuda-mps-control -d > /dev/null 2>&1 < /dev/null \
    && timeout 60 $PY -c "import torch; print('MPS client ok:', torch.ones(8, device='cuda').sum().item())"; then
    export CIFAR10_MPS=1
    log "MPS: daemon started in $((SECONDS - began)) s; server(s): $(echo get_server_list | nvidia-cuda-mps-control \
      2>&1 | tr '\n' ' ')"
    return 0
  fi
  log "MPS: could not start or serve a client (its log below); the lanes time-slice the GPU"
  tail -n 20 "$TMP_DIR"/mps-log/*.log 2> /dev/null
  MPS_FAILED=1
  stop_mps
  return 1
}

stop_mps() {
  if [[ -d "$MPS_PIPE" ]]; then
    if ! echo quit | CUDA_MPS_PIPE_DIRECTORY=$MPS_PIPE timeout 15 nvidia-cuda-mps-control > /dev/null 2>&1; then
      log "MPS: the daemon did not confirm 'quit' within 15 s (pipe $MPS_PIPE)"
    fi
    sleep 1
    rm -rf "$MPS_PIPE"
  fi
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY CIFAR10_MPS
}
trap 'stop_mps; rm -rf "$TMP_DIR"' EXIT
left() { echo $((BUDGET_S - PACK_RESERVE_S - (SECONDS - start))); }

# Run one step under the time left; a step cut off loses only its unfinished experiment. GUARD_OK_RC: an exit
# status besides 0 that is an answer, not a failure (not logged as one).
guard() {
  local t rc
  t=$(left)
  if ((t < 15)); then log "budget spent, skipped: $*"; return 124; fi
  log "run (<= ${t}s): $*"
  timeout --kill-after=10 "$t" "$@"
  rc=$?
  ((rc == 0 || rc == ${GUARD_OK_RC:-0})) || log "exit $rc: $*"
  return $rc
}

pack() {
  local items=() ck=() name size
  for d in "results/$PROFILE" results/bench; do [[ -e "$d" ]] && items+=("$d"); done
  # The profile's own figures only (full: figs/*.png; a published smoke/quick run: figs/<profile>/), not another
  # profile's, which a merge would put back as they were when the call started.
  if [[ "$PROFILE" == full ]]; then
    for d in figs/*.png; do [[ -e "$d" ]] && items+=("$d"); done
  elif [[ -e "figs/$PROFILE" ]]; then
    items+=("figs/$PROFILE")
  fi
  if ((${#items[@]})); then
    # Compressed: the whole study's JSON (per-step series, weight histograms) passes the 16 MiB a file of $OUT may
    # have to come back; gzip makes it a few MB.
    # Not the temporary files of an atomic write that a killed step left (.NAME.XXXX.tmp).
    tar -czf "$OUT/results.tgz.tmp" --exclude='*.pt' --exclude='*.pth' --exclude='.*.tmp' "${items[@]}" \
      && mv -f "$OUT/results.tgz.tmp" "$OUT/results.tgz" \
      && mkdir -p "$STATE_DIR" && cp -f "$OUT/results.tgz" "$STATE_DIR/results.tgz.tmp" \
      && mv -f "$STATE_DIR/results.tgz.tmp" "$STATE_DIR/results.tgz"
    size=$(stat -c %s "$OUT/results.tgz" 2> /dev/null || echo 0)
    if ((size > 15 * 1024 * 1024 && ! PACK_WARNED)); then  # once a call
      PACK_WARNED=1
      log "WARNING: $OUT/results.tgz is $size bytes, near or over the 16 MiB a returned file may have: it may not" \
        "come back (files_left_out). Before the next call, split it (pack() in this script, e.g. results/$PROFILE" \
        "in a tar of its own)"
    fi
  fi
  for name in $KEEP_CHECKPOINTS; do  # trained in this call (a warm machine's older ones came back before)
    [[ -f "checkpoints/$PROFILE/$name.pt" && "checkpoints/$PROFILE/$name.pt" -nt "$CALL_STAMP" ]] \
      && ck+=("checkpoints/$PROFILE/$name.pt")
  done
  if ((${#ck[@]})); then
    tar -czf /tmp/keep-checkpoints.tgz "${ck[@]}"
    size=$(stat -c %s /tmp/keep-checkpoints.tgz)
    rm -f "$OUT"/checkpoints.tgz.part*
    if ((size <= 45 * 1024 * 1024)); then  # $OUT returns at most 8 files of 16 MiB, 64 MiB in all
      split -b 15m -d -a 1 /tmp/keep-checkpoints.tgz "$OUT/checkpoints.tgz.part"
    else
      log "checkpoints ${ck[*]} are $size bytes compressed: too large to come back, not packed"
    fi
  fi
}

# At the end of a call, torch.compile's cache where a file of it outside Triton's own folder is newer than the call's
# start (the call compiled something): into $OUT/inductor-cache.tgz (which --merge unites with COMPILE_CACHE), without
# Triton's folder (Inductor's entries hold their kernels and write them there again when read back), if at most
# COMPILE_CACHE_MAX_MIB compressed and within what $OUT may bring back beside the call's other files (64 MiB in all);
# else only the files this call wrote, if they fit; else nothing.
# Not after every step as pack(): seconds of tar each time, for what only a later call uses.
pack_compile_cache() {
  local dir=$TORCHINDUCTOR_CACHE_DIR size=0 max rc what packed=$TMP_DIR/inductor-cache.tgz new=$TMP_DIR/cache-new.txt
  [[ -n "$COMPILE_CACHE" && -d "$dir" ]] || return 0
  (cd "$dir" && find . -type f -newer "$CALL_STAMP" ! -path './triton/*' ! -path './locks/*' ! -name '*.lock' \
    ! -name '*.tmp*') > "$new" || return 0
  [[ -s "$new" ]] || return 0
  max=$((63 * 1024 * 1024 - $(du -sb "$OUT" | cut -f1)))  # (1 MiB to spare)
  ((max > COMPILE_CACHE_MAX_MIB * 1024 * 1024)) && max=$((COMPILE_CACHE_MAX_MIB * 1024 * 1024))
  for what in whole new; do
    if [[ "$what" == whole ]]; then
      tar -czf "$packed" --exclude=./triton --exclude=./locks --exclude='*.lock' --exclude='*.tmp*' -C "$dir" . \
        2> "$TMP_DIR/cache-pack.txt"
    else
      tar -czf "$packed" -C "$dir" --files-from="$new" 2> "$TMP_DIR/cache-pack.txt"
    fi
    rc=$?
    if ((rc > 1)); then  # (1: a file changed while read; the archive is still whole)
      log "could not pack torch.compile's cache (tar exit $rc): $(head -c 300 "$TMP_DIR/cache-pack.txt")"
      rm -f "$packed"
      return
    fi
    size=$(stat -c %s "$packed")
    if ((size <= max)); then
      mv -f "$packed" "$OUT/inductor-cache.tgz"
      log "torch.compile's cache packed ($size bytes$([[ "$what" == new ]] && echo ", only what this call wrote"))"
      return
    fi
  done
  rm -f "$packed"
  log "torch.compile's cache is too large to come back (what this call wrote: $size bytes compressed, more than" \
    "COMPILE_CACHE_MAX_MIB or what \$OUT may still bring back, $max bytes): the next session's calls compile afresh" \
    "what the carried cache lacks"
}

# A plan's training runs, in order, in one process; --time-limit: a run that cannot finish stops resumably before
# the step's timeout would kill it.
train_runs() {  # LIMIT_SECONDS NAME...   (SPARE_ARGS: a lane's --spare FILE --spare-by T, below)
  local limit=$1
  shift
  guard $PY -m lib run --profile "$PROFILE" --publish --data "$DATA" $CPU_OK --part1 --part2 --seeds $SEEDS \
    --only "$@" --time-limit "$limit" ${SPARE_ARGS[@]+"${SPARE_ARGS[@]}"}
}

# The plan's 'lane' lines: one train_runs per lane, all at once (their log lines prefixed), each stopping
# resumably at the call's time limit; CIFAR10_LANES makes their results record that they shared the GPU. SPARE
# (the plan's 'spare' line, SECONDS NAME:COST...): a queue file the lanes share; a lane whose runs are done takes
# from it the next run that ends, by its estimate in a lane, before the plan's longest lane would (SECONDS from
# now), so that a lane does not idle while the others train and the plan's later lines keep their time.
run_lanes() {  # ROUND LANE...
  local round=$1 i=0 names pids=() limit queue until entries spare_args=()
  shift
  limit=$(($(left) - STOP_RESERVE_S))
  log "$# lanes at once$([[ -n "${CIFAR10_MPS:-}" ]] && echo ' under MPS' || echo ', time-sliced')"
  if [[ -n "$SPARE" && "$USE_SPARE" == 1 ]]; then
    read -r until entries <<< "$SPARE"
    queue=$TMP_DIR/spare-$round.txt
    printf '%s\n' $entries > "$queue"
    spare_args=(--spare "$queue" --spare-by "$(($(date +%s) + until))")
    log "spare runs for a lane that ends early, until ${until} s from now: $entries"
  fi
  for names in "$@"; do
    i=$((i + 1))
    { export CIFAR10_LANES=$#
      SPARE_ARGS=(${spare_args[@]+"${spare_args[@]}"})
      train_runs "$limit" $names 2>&1 | sed -u "s/^/[lane $i] /"; } &
    pids+=($!)
  done
  local rc=0 pid
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  return $rc
}

# The plan of plan_and_run (its locals: plan arguments, mps_env, startup, whole) into PATH.
plan_into() {  # PATH SUBSET...
  local into=$1
  shift
  env ${mps_env[@]+"${mps_env[@]}"} $PY -m lib bench --plan "$@" --budget "$(($(left) - PLAN_S - STOP_RESERVE_S))" \
    --margin "$PLAN_MARGIN" --profile "$PROFILE" --data "$DATA" --seeds $SEEDS --lanes "$LANES" \
    ${startup[@]+"${startup[@]}"} ${CHOOSE[@]+"${CHOOSE[@]}"} ${whole[@]+"${whole[@]}"} > "$into"
}

# 4./5. of main: plan the unfinished experiments of the subset that fit the time left (less PLAN_S and
# STOP_RESERVE_S, which the plan and the runs' --time-limit take), print the plan (also into $OUT/plan.txt, later
# rounds appended), run it: the lanes at once (a single lane alone), then the other lines one after another.
# Round 1 may give a run longer than the call the call alone (# partial: a next call on this warm machine resumes
# it) unless PARTIAL=0; later rounds plan whole runs only (--no-partial). Returns 0 when it ran its plan, 1 when
# nothing fitted, 2 when planning failed, 3 when a step of it failed (a later round would plan it again).
plan_and_run() {  # ROUND SUBSET...
  local round=$1 plan=$TMP_DIR/plan-$1.txt line kind names lines=() lanes=() rest=() whole=() failed=0 SPARE=""
  shift
  ((round == 1)) && [[ "$PARTIAL" == 1 ]] || whole=(--no-partial)
  # With lanes measured under MPS (this GPU's bench file holds measurements under MPS at LANES at once) and the
  # daemon not yet up, the plan reads the slowdowns measured under MPS and keeps MPS_START_S of its budget to start
  # it; only a plan with two lanes or more starts it (a plan without lanes then has the whole budget). If it does
  # not start, the plan is made again for lanes that time-slice the GPU.
  local mps_env=() startup=()
  if ((LANES > 1)) && [[ -z "$CPU_OK" && -z "${CIFAR10_MPS:-}" && "$MPS" != 0 && "$MPS_FAILED" == 0 ]] \
    && grep -ls "\"device\": \"$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -n 1)\"" \
      results/bench/*.json | xargs -r grep -qs "/x${LANES}/mps\""; then
    mps_env=(CIFAR10_MPS=1) startup=(--lanes-startup "$MPS_START_S")
  fi
  plan_into "$plan" "$@" || { log "planning failed"; stop_mps; return 2; }
  if ((${#mps_env[@]})) && (($(grep -c '^lane ' "$plan") >= 2)) && ! start_mps; then
    mps_env=() startup=()
    log "planning again, for lanes that time-slice the GPU"
    plan_into "$plan" "$@" || { log "planning failed"; return 2; }
  fi
  if ((${#CHOOSE[@]})); then CIFAR10_COMPILE=$(<"$TMP_DIR/compile.txt"); export CIFAR10_COMPILE; CHOOSE=(); fi
  ((round == 1)) && log "torch.compile'd training steps: ${CIFAR10_COMPILE:-none} (the others: CUDA graphs)"
  { ((round == 1)) || echo "# round $round"; cat "$plan"; } >> "$OUT/plan.txt"
  cat "$plan"
  if grep -q '^# partial' "$plan"; then
    log "a run longer than this call: call again within 30 s (same subset), on this warm machine, to resume it"
  fi
  mapfile -t lines < <(grep -v '^#' "$plan")
  ((${#lines[@]})) || { stop_mps; return 1; }
  for line in "${lines[@]}"; do
    case "$line" in
      "lane "*) lanes+=("${line#lane }") ;;
      "spare "*) SPARE=${line#spare } ;;  # for run_lanes
      *) rest+=("$line") ;;
    esac
  done
  if ((${#lanes[@]} == 1)); then  # nothing beside it: alone (planned at its slowdown: a margin more)
    rest=("train ${lanes[0]}" ${rest[@]+"${rest[@]}"})
    lanes=()
  fi
  if ((${#lanes[@]})); then
    run_lanes "$round" "${lanes[@]}" || failed=1
    pack
  fi
  ((${#rest[@]} == 0)) || stop_mps  # what follows runs alone (no rest: MPS stays up for a next round's lanes)
  for line in ${rest[@]+"${rest[@]}"}; do
    read -r kind names <<< "$line"
    case "$kind" in
      train) train_runs $(($(left) - STOP_RESERVE_S)) $names ;;
      # No time limit for a forced retraining: --force deletes its checkpoints, so a stopped one could not resume.
      train-force) guard $PY -m lib run --profile "$PROFILE" --publish --data "$DATA" $CPU_OK --part2 --force --only $names ;;
      slices) guard $PY -m lib run --profile "$PROFILE" --publish --data "$DATA" $CPU_OK --slices ;;  # source by name
      probe) guard $PY -m lib run --profile "$PROFILE" --publish --data "$DATA" $CPU_OK --probe ;;
      costs) guard $PY -m lib run --profile "$PROFILE" --publish --data "$DATA" $CPU_OK --costs --models $names ;;
      *) log "unknown plan line: $line"; false ;;
    esac
    (($? == 0)) || failed=1
    pack
  done
  ((failed)) && return 3
  return 0
}

main() {
  local subset=("$@") tokens=() want_bench=0 checked_graphs=0 t
  ((${#subset[@]})) || subset=(all)
  for t in "${subset[@]}"; do
    if [[ "$t" == bench ]]; then want_bench=1; else tokens+=("$t"); fi
  done
  log "subset: ${subset[*]}; seeds $SEEDS; budget ${BUDGET_S}s; profile $PROFILE; commit ${STUDY_COMMIT:-unknown};" \
    "CANet blocks: CIFAR10_CANET_MERGED=${CIFAR10_CANET_MERGED:-auto};" \
    "${CIFAR10_STEP_GRAPH:+whole-step CUDA graph: CIFAR10_STEP_GRAPH=$CIFAR10_STEP_GRAPH; }started" \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)"

  # The previous call's results on this machine, before anything reads the results or the bench file. Only a pack
  # of the last 30 minutes (the device tool holds a machine at most that long): an older one is not this
  # session's, e.g. of a dry run on this machine, and merging it could put back older figures.
  if [[ "$GPU_STATE" == 1 && -f "$STATE_DIR/results.tgz" ]] \
    && [[ -z $(find "$STATE_DIR/results.tgz" -mmin +30) ]]; then
    if merge_tar "$STATE_DIR/results.tgz" > "$TMP_DIR/restored.txt"; then
      log "merged the previous call's results on this machine ($STATE_DIR/results.tgz," \
        "$(wc -l < "$TMP_DIR/restored.txt") files)"
    else
      log "could not merge all of the previous call's results ($STATE_DIR/results.tgz; above)"
    fi
  fi

  # torch.compile's cache of earlier sessions' calls (carried with .carry/), beside what this machine holds; read
  # whole first, so that a damaged archive leaves nothing cut short in the cache (a cut module would fail a compile).
  if [[ -n "$COMPILE_CACHE" && -f "$COMPILE_CACHE" ]]; then
    if tar -tzf "$COMPILE_CACHE" > /dev/null 2> "$TMP_DIR/cache-tar.txt" && mkdir -p "$TORCHINDUCTOR_CACHE_DIR" \
      && tar -xzf "$COMPILE_CACHE" -C "$TORCHINDUCTOR_CACHE_DIR" --skip-old-files 2> "$TMP_DIR/cache-tar.txt"; then
      log "torch.compile's cache of earlier calls unpacked ($COMPILE_CACHE, $(stat -c %s "$COMPILE_CACHE") bytes)"
    else
      log "could not unpack torch.compile's cache $COMPILE_CACHE (models compile afresh): $(head -c 300 \
        "$TMP_DIR/cache-tar.txt")"
    fi
  fi

  # 1. The versions, the CUDA test and the data, decoded once into the cache (copied to DATA first when DATA is a
  #    path, not 'shared'), in one Python start (each imports torch: 5-13 s on the GPU machine). Exit 3: no CUDA
  #    device (the data is then read only for a dry run).
  if [[ "$DATA" != shared && "$DATA_SRC" != "$DATA" ]]; then cp -fp "$DATA_SRC" "$DATA" || return 1; fi
  # CIFAR10_TRACEBACK: python -m lib reports bad input as one line; the log of a device call keeps every traceback.
  export CIFAR10_SOURCE="$DATA" TQDM_DISABLE=1 CIFAR10_TRACEBACK=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  local rc
  # It also writes what the missing-only steps 2 and 3 would do, so that a step with nothing to do is left out;
  # not with BENCH_ARGS that change what those steps read or measure (another bench file or device, more
  # precisions, compiled keys), nor if it fails: then every step runs.
  local missing_dir=$TMP_DIR
  [[ " $BENCH_ARGS " =~ \ --(out|device|check-precisions|compile)[\ =] ]] && missing_dir=""
  GUARD_OK_RC=3 guard $PY -c "import sys; from lib.bench import runner_first_step
sys.exit(runner_first_step(sys.argv[1] == '1', sys.argv[2] or None, sys.argv[3].split(), bool(sys.argv[4]),
                           sys.argv[5].split(), [int(s) for s in sys.argv[6].split()], sys.argv[7]))" \
    "$ALLOW_CPU" "$missing_dir" "$STUDY_MODELS" "$PROBE_BENCH" "${tokens[*]}" "$SEEDS" "$PROFILE"
  rc=$?
  if ((rc == 2)); then
    log "the study subset has a word the study does not know (above): nothing ran"
    return 2
  elif ((rc == 3)) && [[ "$ALLOW_CPU" == 1 ]]; then
    log "no CUDA device: dry run on the CPU (ALLOW_CPU=1)"
    CPU_OK=--allow-cpu-training  # lib run refuses the full profile's work on a CPU without it
  elif ((rc == 3)); then
    log "no CUDA device: this script is for the GPU machine (ALLOW_CPU=1: a dry run on the CPU)"
    return 1
  elif ((rc != 0)); then
    log "the first step failed (above: torch or torchvision do not import, or the data cannot be read):" \
      "nothing ran; this script is for the GPU machine, with the data in .carry/"
    return 1
  fi

  # 2. The CUDA-graph step must compute what the eager step computes: GRAPH_CHECK_MODEL every call (fp32 and
  #    bf16); every study model once per device and torch version (recorded in the bench file). If the first
  #    fails, the call stops (the bench file's timings and the plan assume graphs: look at the check first);
  #    a model that fails trains eagerly (CIFAR10_EAGER_MODELS), and its entry is re-timed so (step 3).
  if [[ "$GRAPH_CHECK" == 1 ]]; then
    if ! guard $PY -m lib bench --check-graphs "$GRAPH_CHECK_MODEL" --check-precisions fp32 bf16 --data "$DATA" \
      $BENCH_ARGS; then
      log "the CUDA-graph check of $GRAPH_CHECK_MODEL failed or did not finish: no measurements, no training"
      return 1
    elif [[ -f "$TMP_DIR/graph-missing.txt" && ! -s "$TMP_DIR/graph-missing.txt" ]] \
      && [[ -f "$TMP_DIR/eager-recorded.txt" ]] \
      && ! grep -qw -- "$GRAPH_CHECK_MODEL" "$TMP_DIR/eager-recorded.txt"; then  # (its check just passed)
      log "CUDA-graph checks of the study models: all recorded as now (step 1 read the bench file)"
      CIFAR10_EAGER_MODELS=$(<"$TMP_DIR/eager-recorded.txt")
    else
      checked_graphs=1
      rm -f "$TMP_DIR/eager.txt"
      guard $PY -m lib bench --check-graphs $STUDY_MODELS --missing-only --graph-failures-file "$TMP_DIR/eager.txt" \
        --data "$DATA" $BENCH_ARGS
      if [[ -f "$TMP_DIR/eager.txt" ]]; then  # written after the checks: the step finished
        CIFAR10_EAGER_MODELS=$(<"$TMP_DIR/eager.txt")
      else  # the checks did not finish: what the bench file says
        CIFAR10_EAGER_MODELS=$($PY -m lib bench --graph-failures $BENCH_ARGS) || CIFAR10_EAGER_MODELS=""
      fi
    fi
  elif [[ -f "$TMP_DIR/eager-recorded.txt" ]]; then  # no checks in this call: the recorded ones (step 1 read them)
    CIFAR10_EAGER_MODELS=$(<"$TMP_DIR/eager-recorded.txt")
  else  # e.g. the second call on a machine checked minutes ago
    CIFAR10_EAGER_MODELS=$($PY -m lib bench --graph-failures $BENCH_ARGS) || CIFAR10_EAGER_MODELS=""
  fi
  export CIFAR10_EAGER_MODELS
  [[ -z "$CIFAR10_EAGER_MODELS" ]] || log "trained without CUDA graphs (their check failed): $CIFAR10_EAGER_MODELS"

  # 3. Measurements: the headline table on request; what the plan needs, always. Only what the bench file
  #    lacks, or timed otherwise than now (eager while CUDA graphs are on: lib.bench.timed_as_now).
  if ((want_bench)); then
    # The compiled epochs come last in this process and are compared with its own naive epochs.
    guard $PY -m lib bench --models $BENCH_NAIVE ${BENCH_COMPILE:+--also-compiled $BENCH_COMPILE} \
      ${BENCH_STEP_GRAPH:+--also-step-graph $BENCH_STEP_GRAPH --also-step-graph-compiled $BENCH_STEP_GRAPH} \
      --missing-only --data "$DATA" $BENCH_ARGS
  fi
  # Left out where step 1 found nothing to time and the study models' graph checks did not run since (a new
  # failure re-times its model; GRAPH_CHECK_MODEL's every-call check counts only where it had failed: step 2).
  if ((want_bench || checked_graphs)) || [[ ! -f "$TMP_DIR/fast-missing.txt" || -s "$TMP_DIR/fast-missing.txt" ]]
  then
    guard $PY -m lib bench --fast-only $STUDY_MODELS $PROBE_BENCH --missing-only --data "$DATA" $BENCH_ARGS
  else
    log "fast epochs of the study models and the probe steps: all recorded as now (step 1 read the bench file)"
  fi
  if [[ -n "${CIFAR10_STEP_GRAPH:-}" ]]; then  # the whole-step graph rows the plan reads for the runs it names: both
    local sg=${CIFAR10_STEP_GRAPH//,/ }         # variants, compiled inside or not (the compile choice comes below)
    [[ " $sg " == *" all "* ]] && sg=$STUDY_MODELS
    guard $PY -m lib bench --fast-only $sg --step-graph-rows --missing-only --data "$DATA" $BENCH_ARGS
  fi
  if ((want_bench)) && [[ -n "$AGREEMENT" ]]; then  # once per device: --missing-only
    guard $PY -m lib bench --agreement "$AGREEMENT" --epochs 3 --missing-only --data "$DATA" $BENCH_ARGS
  fi
  if ((want_bench)) && [[ -n "$TRACE" ]]; then  # where the step's time goes (CANet: merged vs per path); once
    guard $PY -m lib bench --trace "$TRACE" --missing-only --data "$DATA" $BENCH_ARGS
  fi
  if ((want_bench)) && [[ -n "$BOOKKEEPING" ]]; then  # where the 0.1-0.3 s per epoch besides training go
    guard $PY -m lib bench --bookkeeping $BOOKKEEPING --missing-only --data "$DATA" $BENCH_ARGS
  fi
  if ((want_bench)) && [[ -n "$COMPILE_FAST" ]]; then  # so that --compile-choice can pick them
    guard $PY -m lib bench --fast-only $COMPILE_FAST --compile --missing-only --data "$DATA" $BENCH_ARGS
  fi
  pack
  # Which models train torch.compile'd instead of CUDA-graphed (the plan's estimates follow the choice).
  # auto: the first plan's Python process also picks them (CHOOSE: one start less), bench-only calls ask alone
  local measure_lanes=0  # 'bench' with lanes: the concurrency measurement, which times the variants chosen here
  ((want_bench && LANES > 1)) && [[ -n "$CONCURRENCY" ]] && measure_lanes=1
  local choose_again=0   # the plan chooses again after the concurrency measurement (lanes-aware: --lanes)
  case "$COMPILE_MODELS" in
    auto) ((measure_lanes)) && choose_again=1
          if ((${#tokens[@]})) && ((!measure_lanes)); then
            rm -f "$TMP_DIR/compile.txt"; CHOOSE=(--compile-choice-file "$TMP_DIR/compile.txt"); COMPILE_MODELS=""
          else
            COMPILE_MODELS=$($PY -m lib bench --compile-choice $BENCH_ARGS) || COMPILE_MODELS=""
          fi ;;
    none) COMPILE_MODELS="" ;;
  esac
  export CIFAR10_COMPILE="$COMPILE_MODELS"
  if ((measure_lanes)); then  # each model alone and LANES at once, under MPS where it starts
    start_mps
    guard $PY -m lib bench --concurrent $CONCURRENCY --lanes "$LANES" --missing-only --data "$DATA" $BENCH_ARGS
    pack
    if ((choose_again && ${#tokens[@]})); then  # with what was just measured at once (the first plan picks)
      rm -f "$TMP_DIR/compile.txt"; CHOOSE=(--compile-choice-file "$TMP_DIR/compile.txt")
    fi
  fi
  if ! ((${#tokens[@]})); then
    stop_mps
    log "torch.compile'd training steps: ${CIFAR10_COMPILE:-none} (the others: CUDA graphs)"; log "bench only"
    return 0
  fi

  # 4. Plan the unfinished experiments that fit, then 5. run them; then, while time is left and a plan skipped
  #    runs, plan again (the estimates carry PLAN_MARGIN and a start-up allowance per process: runs end early).
  rm -f "$OUT/plan.txt"
  if (($(left) - PLAN_S - STOP_RESERVE_S < 15)); then  # the steps above took the call's time
    log "budget spent before the plan: nothing trained in this call (the next call plans with what this one measured)"
    return 1
  fi
  local round=1
  plan_and_run 1 "${tokens[@]}"
  rc=$?
  ((rc == 2)) && return 1
  while ((rc == 0 && round <= REPLAN)) && (($(left) >= REPLAN_MIN_S)) \
    && grep -q '^# skipped' "$TMP_DIR/plan-$round.txt" && ! grep -q '^# partial' "$TMP_DIR/plan-$round.txt"; do
    round=$((round + 1))
    log "round $round: $(left) s left, planning again (whole runs only)"
    plan_and_run "$round" "${tokens[@]}"
    rc=$?
  done
  ((rc == 3)) && log "a step of round $round failed (above): nothing planned again in this call"
  # The table as it stands, where this call measured (a Python start: seconds the training calls leave out).
  ((!want_bench)) || $PY -m lib bench --table
  ((rc != 3))  # the call's exit status: 1 where a step failed
}

# The exit status: main's (0; 1 where nothing could run or a step failed, 2 for an unknown subset word: the log says
# which), after the packing, which always happens.
(main "$@"; status=$?; stop_mps; pack; pack_compile_cache
 log "done; \$OUT holds: $(cd "$OUT" && ls -m) (call status $status)"; exit $status) 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
