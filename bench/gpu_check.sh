#!/usr/bin/env bash
# bench/gpu_check.sh — everything a GPU session checks, as one command on the GPU machine (one
# H100, 16 cores, under 10 minutes): build netlm with the CUDA backend (Release, sm_90), run the
# CUDA tests (ctest -L cuda), compute-sanitizer memcheck and racecheck on short versions of them,
# then the inference benchmarks of the CUDA engine (build/netlm_model_bench --device cuda) and of
# PyTorch + transformers on the same card (bench/gpu_bench.py), and a summary table.
#
#   bench/gpu_check.sh               on the GPU machine; results under $OUT (default ./gpu-out)
#   bench/gpu_check.sh --quick       the same in under 4.5 minutes: PyTorch eager only (inference and
#                                    training), no forward racecheck unless NETLM_GPU_ONLY names
#                                    it, no heuristic-GEMM variant
#   bench/gpu_check.sh --verify      correctness only: build, CUDA tests (units and the commands
#                                    on the GPU), end to end against the CPU, memcheck, racecheck
#   bench/gpu_check.sh --bench       speed only: build, netlm and PyTorch benchmarks, variants
#                                    (two calls of ~5-9 minutes each when one would not fit)
#   NETLM_GPU_DEADLINE=S             end every stage by S seconds from the start (default 570)
#   NETLM_GPU_TORCH=0                no PyTorch stage
#   NETLM_GPU_TORCH_ONLY=train,qwen  PyTorch's cases whose name contains one of these (gpu_bench.py --only)
#   NETLM_GPU_ONLY=a,b,...           only these stages (and the build), by the names the summary
#                                    gives: a rerun of what failed, or of what a change touched
#   NETLM_GPU_CASES=qwen05b,train-   netlm_model_bench's cases whose name contains one of these (--only)
#   NETLM_GPU_CTEST_EXCLUDE=regex    CUDA tests left out of ctest-cuda (ctest -E)
#   NETLM_GPU_GEMMS=qwen-mlp         netlm_gemm_bench's cases whose name contains this (--only)
#   NETLM_GPU_SWIGLU_VARIANT=c2      the fused SwiGLU GEMM's variant in the swiglu-fastest variant
#   bench/gpu_check.sh --fetch-deps  here, before: the Debian packages of the C dependencies
#                                    (libpcap, liburcu, json-c, OpenBLAS, libconfig, libsystemd,
#                                    cmocka, pkgconf) into .gpu-deps/, for the GPU machine's image,
#                                    which has CUDA and PyTorch but not these and cannot download;
#                                    carry .gpu-deps with the call; and the captures the CUDA
#                                    tests read from ../shared/data (which does not travel) into
#                                    .gpu-data/: carry it too
#
# Outputs ($OUT, 8 files): env.txt, build.log, tests.log (ctest and sanitizers), netlm.json
# (JSON lines), torch.json, summary.txt, gpu_check.json (each stage's status and time), ncu.txt
# (Nsight Compute on the fused SwiGLU GEMM, on cuBLASLt's GEMM of the same shape and on Qwen2's
# attention, both kernels, norms, RoPE and SwiGLU; the warps' stall reasons in the fused GEMM and
# the grouped attention: ncu-stalls-swiglu, ncu-stalls-attn). Each stage
# has its own time limit so the whole stays under 9.5 minutes and a slow stage cannot starve the
# others; the exit status is non-zero when any stage failed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
deps_dir=$root/.gpu-deps
data_dir=$root/.gpu-data # what integration_gpu_train_cli reads of ../shared/data

if [[ ${1:-} == --fetch-deps ]]; then
    mkdir -p "$deps_dir"
    grep -qxF '/.gpu-deps/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.gpu-deps/' >>.git/info/exclude; }
    (cd "$deps_dir" && apt-get download libpcap0.8-dev libpcap0.8 libdbus-1-3 liburcu-dev liburcu8 \
        libjson-c-dev libjson-c5 libopenblas-pthread-dev libopenblas0-pthread libgfortran5 libquadmath0 \
        libconfig-dev libconfig9 libsystemd-dev libsystemd0 libcmocka-dev libcmocka0 pkgconf-bin \
        libpkgconf3)
    du -sh "$deps_dir"
    grep -qxF '/.gpu-data/' .git/info/exclude || echo '/.gpu-data/' >>.git/info/exclude
    shared=$root/../shared/data
    rm -rf "$data_dir" && mkdir -p "$data_dir/pcaps" "$data_dir/labeled/ustc-tfc2016"
    cp "$shared/pcaps/tcpdump-resp_1_benchmark.pcap" "$data_dir/pcaps/"
    cp -r "$shared/labeled/ustc-tfc2016/sessions" "$data_dir/labeled/ustc-tfc2016/"
    du -sh "$data_dir"
    echo "now call the device tool with carry [\".gpu-deps\", \".gpu-data\"]"
    exit 0
fi

quick=0 do_verify=1 do_bench=1
case ${1:-} in
--quick) quick=1 ;;
--verify) do_bench=0 ;;  # build, CUDA tests, end to end, sanitizers
--bench) do_verify=0 ;;  # build, netlm and PyTorch benchmarks, variants
esac
OUT=${OUT:-$root/gpu-out}
mkdir -p "$OUT"
jobs=$(nproc)
build=$root/build-gpu
rm -f "$build/CMakeCache.txt" # a warm machine keeps the last call's build: configure afresh
status_file=$OUT/gpu_check.json
declare -a stages=()
failed=0

stage_done() { # name status seconds
    stages+=("{\"stage\":\"$1\",\"status\":\"$2\",\"seconds\":$3}")
    [[ $2 == ok ]] || failed=1
    (IFS=,; echo "[${stages[*]}]") >"$status_file"
    printf '== %-28s %-8s %4ss (total %ss)\n' "$1" "$2" "$3" "$SECONDS"
}

# run_stage NAME LIMIT_SECONDS LOG COMMAND...: the command under `timeout`, output appended to LOG
deadline=${NETLM_GPU_DEADLINE:-570} # seconds from the start: the device tool's limit is 600
((quick == 0)) || deadline=${NETLM_GPU_DEADLINE:-270}
run_stage() {
    local name=$1 limit=$2 log=$3 t0=$SECONDS rc=0
    shift 3
    if ! selected "$name" && [[ $name != configure && $name != build-* ]]; then
        return 0
    fi
    ((limit <= deadline - SECONDS)) || limit=$((deadline - SECONDS))
    if ((limit < 10)); then stage_done "$name" no-time 0; return 0; fi
    echo "== $name (limit ${limit}s): $*" >>"$log"
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1 || rc=$?
    if ((rc == 0)); then stage_done "$name" ok $((SECONDS - t0));
    elif ((rc == 124 || rc == 137)); then stage_done "$name" timeout $((SECONDS - t0));
    else stage_done "$name" "rc=$rc" $((SECONDS - t0)); fi
    return 0
}
verify() { ((do_verify == 0)) || run_stage "$@"; }
bench() { ((do_bench == 0)) || run_stage "$@"; }
# selected NAME: whether NETLM_GPU_ONLY lets that stage run (to reserve its time ahead)
selected() { [[ -z ${NETLM_GPU_ONLY:-} || ,$NETLM_GPU_ONLY, == *,$1,* ]]; }

# ---- the machine ----
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv || true
    command -v nvcc && nvcc --version | tail -2 || ls /usr/local/cuda/bin/nvcc
    cmake --version | head -1
    gcc --version | head -1
    nproc
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' || true
    command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer || true
} >"$OUT/env.txt" 2>&1

# ---- the C dependencies: the system's, or the carried Debian packages in a private prefix ----
# The carried libraries are used through generated .pc files; only sonames the system lacks are
# put on LD_LIBRARY_PATH (never a second copy of one the system has, which python would load).
cmake_extra=()
[[ -d $data_dir ]] && cmake_extra+=("-DNETLM_DATA_DIR=$data_dir")
if [[ -d $deps_dir ]] && ls "$deps_dir"/*.deb >/dev/null 2>&1; then
    p=/tmp/netlm-deps
    rm -rf "$p" && mkdir -p "$p/pc" "$p/missing"
    for f in "$deps_dir"/*.deb; do dpkg-deb -x "$f" "$p"; done
    u=$p/usr
    lib=$u/lib/x86_64-linux-gnu
    have=$(ldconfig -p 2>/dev/null | awk 'NR > 1 {print $1}')
    for so in "$lib"/*.so.* "$lib"/openblas-pthread/*.so.* "$p"/lib/x86_64-linux-gnu/*.so.*; do
        name=$(basename "$so")
        grep -qxF "$name" <<<"$have" || ln -sf "$so" "$p/missing/$name"
    done
    pc() { # name libs [cflags]
        printf 'Name: %s\nDescription: carried Debian package\nVersion: 0\nCflags: -I%s/include -I%s/include/x86_64-linux-gnu %s\nLibs: %s\n' \
            "$1" "$u" "$u" "${3:-}" "$2" >"$p/pc/$1.pc"
    }
    pc libpcap "-L$lib -Wl,-rpath-link,$p/lib/x86_64-linux-gnu -lpcap" # for libdbus, carried in /lib
    pc liburcu-qsbr "-L$lib -lurcu-common -lurcu-qsbr"
    pc liburcu-cds "-L$lib -lurcu-common -lurcu-cds"
    pc json-c "-L$lib -ljson-c" "-I$u/include/json-c"
    pc openblas "-L$lib/openblas-pthread -lopenblas" "-I$u/include/x86_64-linux-gnu/openblas-pthread"
    pc libconfig "-L$lib -lconfig"
    pc libsystemd "-L$lib -lsystemd"
    pc cmocka "-L$lib -lcmocka"
    export PKG_CONFIG_PATH=$p/pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
    export LD_LIBRARY_PATH=$p/missing${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    command -v pkg-config >/dev/null || cmake_extra+=("-DPKG_CONFIG_EXECUTABLE=$u/bin/pkgconf")
    echo "carried dependencies: $(ls "$deps_dir" | wc -l) packages; missing sonames: $(ls "$p/missing" | tr '\n' ' ')" >>"$OUT/env.txt"
fi
# NCCL (data-parallel GPU training): the toolkit's, else the nvidia-nccl wheel PyTorch brings
if [[ ! -e /usr/local/cuda/include/nccl.h ]]; then
    nccl_root=$(python3 -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null || true)
    [[ -n $nccl_root && -e $nccl_root/include/nccl.h ]] && cmake_extra+=("-DNETLM_NCCL_ROOT=$nccl_root")
    echo "nccl: ${nccl_root:-not found}" >>"$OUT/env.txt"
fi
# A newer gcc than CI's may warn where gcc 12 does not: the GPU check must not stop on that
# (CI keeps -Werror); nvcc's own -Werror stays.
printf '#!/bin/sh\nexec gcc "$@" -Wno-error\n' >/tmp/netlm-cc && chmod +x /tmp/netlm-cc

# ---- build ----
log=$OUT/build.log
: >"$log"
run_stage configure 120 "$log" env CC=/tmp/netlm-cc cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release \
    -DNETLM_CUDA=ON -DNETLM_DPDK=OFF -DNETLM_MPI=OFF "${cmake_extra[@]}"
cuda_tests=$(cd "$root/tests/unit" && ls test_cuda_*.c | sed 's/\.c$//')
run_stage build-cuda 300 "$log" make -C "$build" -j"$jobs" $cuda_tests netlm_model_bench netlm_gemm_bench
run_stage build-netlm 90 "$log" make -C "$build" -j"$jobs" netlm
"$build/netlm" --version >>"$OUT/env.txt" 2>&1 || true
grep -E "error|warning" "$log" | head -20 || true

# ---- tests, the benchmarks, PyTorch, the variants, Nsight Compute, sanitizers ----
# (in order of what the next change needs first; each stage is cut to what is left before the
# deadline, so a run that runs out of time loses the sanitizer stages first)
log=$OUT/tests.log
: >"$log"
cases=(${NETLM_GPU_CASES:+--only "$NETLM_GPU_CASES"})
# (the unit tests against the CPU, then the training commands on the GPU: gpu_train_cli; verbose:
# the measured differences go into the log, not only the failures)
verify ctest-cuda 240 "$log" ctest --test-dir "$build" -L cuda --verbose --no-tests=error \
    ${NETLM_GPU_CTEST_EXCLUDE:+-E "$NETLM_GPU_CTEST_EXCLUDE"}
# ctest passes a skipped test too: the log must show that the tests ran
if grep -q "Skipped" "$log"; then stage_done cuda-tests-ran skipped 0; fi
: >"$OUT/netlm.json"
# (with every cuBLASLt candidate the engine timed per GEMM shape: which of the heuristic's ranks win)
bench bench-netlm 120 "$OUT/netlm.json" env NETLM_CUDA_GEMM_CANDIDATES=1 "$build/netlm_model_bench" "${cases[@]}" \
    --device cuda --runs 10
# training steps on the GPU (train_cuda_*), with the dropout PyTorch's models train with (GPT-2
# 0.1, Qwen2 none); the PyTorch side is in gpu_bench.py
bench bench-train 90 "$OUT/netlm.json" "$build/netlm_model_bench" "${cases[@]}" --device cuda --train --runs 5
# the GEMMs one by one: the LM head's (odd and padded vocabulary) against ordinary shapes
bench bench-gemm 60 "$OUT/netlm.json" "$build/netlm_gemm_bench" --runs 10 ${NETLM_GPU_GEMMS:+--only "$NETLM_GPU_GEMMS"}
# generation with the device KV cache (model_cuda_generate), the gen-* cases of gpu_bench.py
bench bench-generate 90 "$OUT/netlm.json" "$build/netlm_model_bench" "${cases[@]}" --device cuda --generate --runs 10
# the engine as users run it: classify and replay on the GPU against the CPU
verify e2e-classify-replay 60 "$log" python3 "$root/bench/gpu_e2e.py" --only classify "$build/netlm" \
    "$root/models/ustc-tfc2016" "$root/data/demo.pcap"
verify e2e-generate 60 "$log" python3 "$root/bench/gpu_e2e.py" --only generate "$build/netlm" \
    "$root/models/ustc-tfc2016" "$root/data/demo.pcap"
# the pretrain command's own loop against bench-train's trainer alone (steady step, bf16)
bench bench-e2e-pretrain 90 "$log" python3 "$root/bench/gpu_e2e.py" --only pretrain "$build/netlm" \
    "$root/models/ustc-tfc2016" "$root/data/demo.pcap"
# PyTorch: eager inference and training, then compiled modes while --budget-s lasts (each
# compile takes 30-60 s). It leaves the later benchmark stages (the variants, then Nsight
# Compute) the time they usually take; the sanitizer stages come last and take what is left.
reserve=10
for name in untuned graphs swiglu-fastest swiglu-pass norm-pass attn-group attn-head attn-group-rope attn-wgmma attn-wgmma-rope \
            attn-wgmma-overlap attn-wgmma-overlap-rope attn-wgmma-pair attn-wgmma-pair-rope residual-fp32 profile \
            train-profile train-simt-bwd train-no-dropout pipeline; do
    selected "bench-$name" && reserve=$((reserve + 25))
done
((quick)) || { selected bench-gemm-heuristic && reserve=$((reserve + 25)); selected bench-no-epilogue && reserve=$((reserve + 25)); }
selected ncu-swiglu && reserve=$((reserve + 60))
selected ncu-cublaslt && reserve=$((reserve + 25))
selected ncu-qwen && reserve=$((reserve + 50))
selected ncu-wgmma && reserve=$((reserve + 20))
selected ncu-wgmma-overlap && reserve=$((reserve + 20))
selected ncu-stalls-swiglu && reserve=$((reserve + 30))
selected ncu-stalls-attn && reserve=$((reserve + 25))
left=$((deadline - reserve - SECONDS))
((left > 60)) || left=60
[[ ${NETLM_GPU_TORCH:-1} == 0 ]] || bench bench-torch "$left" "$OUT/summary.txt" env PYTHONUNBUFFERED=1 python3 "$root/bench/gpu_bench.py" \
    --out "$OUT/torch.json" --runs 10 $( ((quick)) && echo --no-compile) --budget-s $((left - 70 > 20 ? left - 70 : 20)) \
    ${NETLM_GPU_TORCH_ONLY:+--only "$NETLM_GPU_TORCH_ONLY"}
# Variants in the same run, tagged in netlm.json: the residual stream in fp32; the time per kind
# of step (no graphs); the heuristic's first GEMM algorithm instead of the fastest candidate
variant() { # name command...
    local name=$1 tmp=$OUT/variant.tmp
    shift
    ((do_bench)) || return 0
    : >"$tmp"
    run_stage "bench-$name" 90 "$tmp" "$@"
    sed "s/^{\"side\":\"netlm\"/{\"side\":\"netlm\",\"variant\":\"$name\"/; s/^{\"cuda_profile\"/{\"variant\":\"$name\",\"cuda_profile\"/" "$tmp" >>"$OUT/netlm.json"
    rm -f "$tmp"
}
# The engine's kernel choices against its default (Qwen2 bf16: the up projection and the attention
# each timed on a shape's first pass, the fastest candidate kept; "kernels" in bench-netlm's lines):
# the size rules that decide without timing (untuned); CUDA graphs at every batch size, not only
# the latency cases' (graphs); the fused variant bench-gemm timed fastest
# (NETLM_GPU_SWIGLU_VARIANT, else gpu_fastest_swiglu.py's pick, else the default) on every batch
# size; cuBLASLt's GEMM then the SwiGLU as a pass of its own; grouped attention on every batch
# size; attention one block per query head; RoPE inside the grouped attention (classify pass); the
# grouped attention on Hopper's warpgroup products (attention_wgmma.cu), without and with RoPE inside,
# and the same with each key tile's softmax beside the tile before's P·V (wgmma-overlap), and with
# two query tiles a block (wgmma-pair)
swiglu_variant=${NETLM_GPU_SWIGLU_VARIANT:-$(python3 "$root/bench/gpu_fastest_swiglu.py" "$OUT/netlm.json" || echo 1)}
echo "fastest fused SwiGLU GEMM variant: $swiglu_variant" >>"$OUT/env.txt"
variant untuned env NETLM_CUDA_KERNEL_TUNE=0 "$build/netlm_model_bench" "${cases[@]}" --device cuda --runs 10
variant graphs "$build/netlm_model_bench" "${cases[@]}" --device cuda --runs 10 --graphs
variant swiglu-fastest env NETLM_CUDA_SWIGLU_GEMM="$swiglu_variant" "$build/netlm_model_bench" "${cases[@]}" \
    --device cuda --runs 10
variant swiglu-pass env NETLM_CUDA_SWIGLU_GEMM=0 "$build/netlm_model_bench" "${cases[@]}" --device cuda --runs 10
# Qwen2's norm before the MLP as a pass of its own (xn written and read), not in the up product
variant norm-pass env NETLM_CUDA_NORM_IN_UP=0 "$build/netlm_model_bench" "${cases[@]}" --device cuda --runs 10
variant attn-group env NETLM_CUDA_ATTN=group "$build/netlm_model_bench" "${cases[@]}" --device cuda --runs 10
variant attn-head env NETLM_CUDA_ATTN=head "$build/netlm_model_bench" "${cases[@]}" --device cuda --runs 10
variant attn-group-rope env NETLM_CUDA_ATTN=group-rope "$build/netlm_model_bench" "${cases[@]}" --device cuda \
    --runs 10
variant attn-wgmma env NETLM_CUDA_ATTN=wgmma "$build/netlm_model_bench" "${cases[@]}" --device cuda --runs 10
variant attn-wgmma-rope env NETLM_CUDA_ATTN=wgmma-rope "$build/netlm_model_bench" "${cases[@]}" --device cuda \
    --runs 10
variant attn-wgmma-overlap env NETLM_CUDA_ATTN=wgmma-overlap "$build/netlm_model_bench" "${cases[@]}" --device cuda \
    --runs 10
variant attn-wgmma-overlap-rope env NETLM_CUDA_ATTN=wgmma-overlap-rope "$build/netlm_model_bench" "${cases[@]}" \
    --device cuda --runs 10
variant attn-wgmma-pair env NETLM_CUDA_ATTN=wgmma-pair "$build/netlm_model_bench" "${cases[@]}" --device cuda --runs 10
variant attn-wgmma-pair-rope env NETLM_CUDA_ATTN=wgmma-pair-rope "$build/netlm_model_bench" "${cases[@]}" \
    --device cuda --runs 10
variant residual-fp32 "$build/netlm_model_bench" "${cases[@]}" --device cuda --runs 10 --residual fp32
variant profile "$build/netlm_model_bench" "${cases[@]}" --device cuda --runs 5 --profile
variant train-profile env NETLM_CUDA_PROFILE=1 "$build/netlm_model_bench" "${cases[@]}" --device cuda --train --runs 3
variant train-simt-bwd env NETLM_CUDA_ATTN_BWD=simt "$build/netlm_model_bench" "${cases[@]}" --device cuda --train --runs 5
# dropout's cost (and the figures of the runs before bench-train trained with it)
variant train-no-dropout "$build/netlm_model_bench" "${cases[@]}" --device cuda --train --runs 5 --dropout 0
variant pipeline "$build/netlm_model_bench" "${cases[@]}" --device cuda --pipeline --runs 10
((quick)) || variant gemm-heuristic env NETLM_CUDA_GEMM_TUNE=0 "$build/netlm_model_bench" "${cases[@]}" --device cuda --runs 10
# the bias/GELU epilogue costs the up GEMM 620 vs 750 TFLOP/s (H200): against the separate kernel
((quick)) || variant no-epilogue env NETLM_CUDA_NO_EPILOGUE=1 "$build/netlm_model_bench" "${cases[@]}" --device cuda --runs 10
# Nsight Compute, after the timings it explains. Where the fused SwiGLU GEMM's time goes: its
# throughput sections for one launch of each variant (clocks left as they are)
ncu=ncu
command -v $ncu >/dev/null || ncu=/usr/local/cuda/bin/ncu
ncu_sections=(--section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis
              --section Occupancy)
bench ncu-swiglu 90 "$OUT/ncu.txt" $ncu --clock-control none -k regex:gemm_swiglu \
    "${ncu_sections[@]}" --section LaunchStats "$build/netlm_gemm_bench" --warmup 0 --runs 1 --only fused
# the same view of cuBLASLt's kernel for the gate/up GEMM (the heuristic's first; its name gives
# the tile and cluster shape), the rate the fused kernel is measured against
bench ncu-cublaslt 40 "$OUT/ncu.txt" env NETLM_CUDA_GEMM_TUNE=0 $ncu --clock-control none \
    -k regex:'nvjet|xmma|cutlass|gemm' --launch-count 1 "${ncu_sections[@]}" --section LaunchStats \
    "$build/netlm_gemm_bench" --runs 1 --only qwen-mlp-up-cublaslt
# where Qwen2.5-0.5B's inference time goes apart from the GEMMs: one launch each of attention,
# the norms, RoPE and the SwiGLU pass (first layer, inside the CUDA graph;
# the size rules' kernels, so that no timed candidates come first)
bench ncu-qwen 90 "$OUT/ncu.txt" env NETLM_CUDA_KERNEL_TUNE=0 $ncu --clock-control none -k regex:'attn_tc|norm_kernel|rope_kernel|swiglu_kernel' \
    --launch-count 5 "${ncu_sections[@]}" "$build/netlm_model_bench" --device cuda --only qwen05b-v60005-b256 --runs 1
# the same view of the attention on Hopper's warpgroup products (attention_wgmma.cu), one launch
bench ncu-wgmma 40 "$OUT/ncu.txt" env NETLM_CUDA_ATTN=wgmma NETLM_CUDA_KERNEL_TUNE=0 $ncu --clock-control none -k regex:attn_wg \
    --launch-count 1 "${ncu_sections[@]}" "$build/netlm_model_bench" --device cuda --only qwen05b-v60005-b256 --runs 1
# and of its variant with the softmax beside the products (2 blocks a multiprocessor, not 3)
bench ncu-wgmma-overlap 40 "$OUT/ncu.txt" env NETLM_CUDA_ATTN=wgmma-overlap NETLM_CUDA_KERNEL_TUNE=0 $ncu \
    --clock-control none -k regex:attn_wg --launch-count 1 "${ncu_sections[@]}" "$build/netlm_model_bench" \
    --device cuda --only qwen05b-v60005-b256 --runs 1
# why the warps wait: stall reasons, issue slots and the hottest instructions of the fused GEMM
# (c2-w3, one launch) and of the grouped attention (the size rules' pick at B256, one launch)
stall_sections=(--section WarpStateStats --section SchedulerStats --section InstructionStats --section SourceCounters)
bench ncu-stalls-swiglu 60 "$OUT/ncu.txt" $ncu --clock-control none -k regex:gemm_swiglu --launch-count 1 \
    "${stall_sections[@]}" "$build/netlm_gemm_bench" --warmup 0 --runs 1 --only fused-c2-w3
bench ncu-stalls-attn 60 "$OUT/ncu.txt" env NETLM_CUDA_KERNEL_TUNE=0 $ncu --clock-control none -k regex:attn_tc_group \
    --launch-count 1 "${stall_sections[@]}" "$build/netlm_model_bench" --device cuda --only qwen05b-v60005-b256 --runs 1
# compute-sanitizer last: the CUDA tests under memcheck and racecheck, in their quick versions
# (the engines' kernels by the size rules: timing every candidate four times under the sanitizer
# would take the stages' time; ctest-cuda runs them all)
san=compute-sanitizer
command -v $san >/dev/null || san=/usr/local/cuda/bin/compute-sanitizer
quick_tests=(env NETLM_CUDA_TEST_QUICK=1 NETLM_CUDA_KERNEL_TUNE=0)
verify memcheck 80 "$log" "${quick_tests[@]}" $san --tool memcheck --leak-check full \
    --error-exitcode 9 "$build/tests/test_cuda_ops"
# the Hopper GEMM with the SwiGLU epilogue (TMA, mbarriers, wgmma): skipped off compute capability 9.0
verify memcheck-swiglu 60 "$log" "${quick_tests[@]}" NETLM_CUDA_TEST_FILTER=test_gemm_swiglu $san --tool memcheck \
    --error-exitcode 9 "$build/tests/test_cuda_ops"
verify memcheck-train 60 "$log" "${quick_tests[@]}" $san --tool memcheck --error-exitcode 9 \
    "$build/tests/test_cuda_backward"
# the trainer as a whole (its buffers carved from two allocations): an out-of-bounds write there
# is invisible to the kernel tests
verify memcheck-trainer 90 "$log" "${quick_tests[@]}" $san --tool memcheck --error-exitcode 9 \
    "$build/tests/test_cuda_train"
verify memcheck-generate 60 "$log" "${quick_tests[@]}" $san --tool memcheck --error-exitcode 9 \
    "$build/tests/test_cuda_generate"
verify memcheck-pipeline 60 "$log" "${quick_tests[@]}" $san --tool memcheck --error-exitcode 9 \
    "$build/tests/test_cuda_pipeline"
verify memcheck-attn-bwd 60 "$log" "${quick_tests[@]}" $san --tool memcheck --error-exitcode 9 \
    "$build/tests/test_cuda_attention_backward"
verify memcheck-model 60 "$log" "${quick_tests[@]}" NETLM_CUDA_TEST_FILTER=test_bf16 $san \
    --tool memcheck --error-exitcode 9 "$build/tests/test_cuda_model"
# (in --quick too when NETLM_GPU_ONLY names it: after a change to the forward kernels)
{ ((quick)) && [[ ,${NETLM_GPU_ONLY:-}, != *,racecheck,* ]]; } ||
    verify racecheck 60 "$log" "${quick_tests[@]}" NETLM_CUDA_TEST_FILTER=test_attention $san \
        --tool racecheck --racecheck-report all --error-exitcode 9 "$build/tests/test_cuda_ops"
# the attention backward's shared memory under racecheck even in --quick (its dK/dV kernel loops
# over the grouped-query heads of a block)
verify racecheck-attn-bwd 120 "$log" "${quick_tests[@]}" NETLM_CUDA_TEST_FILTER=test_attention_backward $san \
    --tool racecheck --racecheck-report all --error-exitcode 9 "$build/tests/test_cuda_attention_backward"
grep -E "FAIL|ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY|\[  (PASSED|FAILED) \]|\"e2e\"" "$log" | head -30 || true

# ---- summary ----
python3 "$root/bench/gpu_summary.py" "$OUT" | tee -a "$OUT/summary.txt"
stage_done total "$([[ $failed == 0 ]] && echo ok || echo failed)" "$SECONDS"
exit $failed
