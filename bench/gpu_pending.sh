#!/usr/bin/env bash
# The GPU runs that issues 3, 4 and 6 still need, as two device calls of < 10 min each.
#   here, first: bash bench/gpu_pending.sh prepare   (wheels into .whl, the chat bundle; CPU, ~3 min)
#   call 1: bash bench/gpu_pending.sh 1   (carry: .whl bench/out/chat_gpu_bundle)
#   call 2: bash bench/gpu_pending.sh 2   (carry: .whl bench/out/quant_kernels.json from call 1's $OUT)
#   kernels only: bash bench/gpu_pending.sh kernels   (no carry; KINDS=..., MS=..., SWEEP_S=... to narrow it)
#   check: bash bench/gpu_pending.sh check   (no carry; compiled tests, engine_check, e2e with shipped configs
#          and each mode's prefill kernels)
#   bus: bash bench/gpu_pending.sh bus   (no carry; the restore kernel's read rate of pinned memory vs the copy engine,
#        and a layer's pieces in one cuMemcpyBatchAsync; ~1 min)
#   graphrestore: bash bench/gpu_pending.sh graphrestore   (carry .whl; CPU-tier restores inside prefill graphs: compiled
#           copy tests, bench/restore_probe.py before / graph / layer:64, then turns16k without the attention part)
#   turns16k: bash bench/gpu_pending.sh turns16k   (carry .whl; issue 3's 15.6K conversation of 256-token turns, 32 sessions
#           of ~15.4K int8 KV restored before the step / layer by layer, the reader's tile sweep at 257 x 15.6K; ~7 min)
#   restore: bash bench/gpu_pending.sh restore   (carry .whl; layer-wise CPU-tier restores: compiled test, then issue 3's
#           run with 32 sessions of ~15.4K tokens restored before the step / layer by layer; ~8 min)
#   full3: bash bench/gpu_pending.sh full3   (carry .whl; issue 3 complete with the transformers baselines, ~9.5 min)
#   feed: bash bench/gpu_pending.sh feed   (carry .whl; turns back to back and 400 ms apart, the answer's last token fed
#         while idle; the 32 sessions; ~6 min)
#   engine: bash bench/gpu_pending.sh engine   (carry .whl for xxhash; issue 3's reuse, sessions and restart figures;
#           ENGINE_ARGS="--skip correctness,ours_decode,int8_kv --turn-sizes 1536" reruns what a change touched)
#   pdl: bash bench/gpu_pending.sh pdl   (carry .whl; LAUNCHES="0,1,0,1": PDL off/on A/B, ~6 min)
#   graph: bash bench/gpu_pending.sh graph   (carry .whl; the model at batch 1 and 16 against transformers,
#          then A/B settings at batch 1, LAUNCHES="argmax0,argmax1" or "0,1" (PDL); ~7 min)
#   amax: bash bench/gpu_pending.sh amax   (no carry; the fp16 GEMV per layer: absmax given, no split-K sum; ~3 min)
#   rowamax: bash bench/gpu_pending.sh rowamax   (carry .whl; the norms' absmax into the GEMV: tests, A/B; ~8 min)
#   attnpre: bash bench/gpu_pending.sh attnpre   (carry .whl; attention's loads before PDL's wait: compiled tests,
#          then the A/B in one engine; ~7 min)
#   prefetch: bash bench/gpu_pending.sh prefetch   (carry .whl; the fp16 GEMV loading a step ahead: compiled tests,
#          the one-token sweep with and without it, the model on the sweep's winners with it off / on; ~9 min)
#   ncu: bash bench/gpu_pending.sh ncu   (no carry; the one-token GEMVs vs a plain read of their bytes, then ncu --set full)
#   wide: bash bench/gpu_pending.sh wide   (carry .whl; one-token GEMVs over block_n 32 and splits up to 32, the model on the
#         winners; W_MODES / GU_MODES: the modes for qkv, o, down / gate_up; TEST_K: compiled tests first)
#   tma: bash bench/gpu_pending.sh tma   (no carry; the paged reader's K/V tiles by TMA: compiled tests, the graph check,
#        attn_bench --quick; NO_ATTN=1: without attn_bench, ~2 min; TMA is on by default since 2026-12-06)
#   tmaturns: bash bench/gpu_pending.sh tmaturns   (carry .whl; the TMA reader: compiled tests, the graph check, every TMA tile
#           shape x splits at turn shapes, then the 256-token turns with TMA off / on, one process each; ~9 min)
#   panels: bash bench/gpu_pending.sh panels   (no carry; int4 weights in panels of the one-token tile: compiled tests,
#           the model on rows / panels, then bench/panel_probe.py; ~9 min)
#   mma: bash bench/gpu_pending.sh mma   (no carry; the one-token GEMV on tensor cores, mode 6: compiled tests, the
#        per-matrix sweep and layer chains of bench/mma_probe.py; E2E_S=270: then the model A/B with its configs)
#   ablate: bash bench/gpu_pending.sh ablate   (no carry; the fp16 GEMV with its finish, math or late release removed, per
#           matrix and per layer; E2E_S=300: then the model with the GEMVs' early release, and all steps ahead, off / on)
#   split1: bash bench/gpu_pending.sh split1   (no carry; the ablation's all-ahead and split-1 configs with early release, then
#           the model A/B tuned0,tuned1,early1,early0 on their winners; ~5 min)
#   sweep24: bash bench/gpu_pending.sh sweep24   (no carry; 2:4's configs swept, the model on heuristic / swept configs; ~5 min;
#            `teal` instead of sweep24: the same for TEAL 40 %, whose heuristic still gathers per value, MS=1 to narrow it)
#   final7: bash bench/gpu_pending.sh final7   (no carry; compiled tests of the shipped configs and decode splits (TEST_S=0:
#           none), SWEEP24_S=80: 2:4's one-token configs swept, then the model at batch 1 and 16 with A/Bs
#           early0,early1,dsplit1,dsplit0; ~6 min)
#   final8: bash bench/gpu_pending.sh final8   (no carry; the sparse table entries compiled, then int4, TEAL and 2:4 from
#           the shipped tables at batch 1 and 16; ~7 min)
#   candidates: bash bench/gpu_pending.sh candidates   (no carry; one-token configs with early release, the int8 LM
#               head's, the model on the winners; ~7 min)
#   gemvpre: bash bench/gpu_pending.sh gemvpre   (no carry; the fp16 GEMV's first weights before PDL's wait: tests, A/B)
#   silu: bash bench/gpu_pending.sh silu   (carry .whl; gate_up's GEMV writing silu(gate) * up: compiled tests, then the A/B)
#   pgraph: bash bench/gpu_pending.sh pgraph   (carry .whl; short prefills as CUDA graphs off / on, bf16 and int8 KV (KV=auto
#           narrows it; QUANT=int4 KV=auto: int4 weights): TTFT and greedy ids; ~8 min;
#           timed 2026-12-05 on an H100 (bf16, int8 KV, int4 weights) and on by default, so `bash bench/gpu_pending.sh
#           engine` gives the issue-3 figures with them; ENGINE_ARGS="--prefill-graph-tokens 0": without)
#   chatgraph: bash bench/gpu_pending.sh chatgraph   (carry .whl bench/out/chat_gpu_bundle; 16 sessions x 5 turns through
#           engine-serve with prefill graphs off, then on: decodes and a chunk as two graph replays; ~9 min)
#   int8kv: bash bench/gpu_pending.sh int8kv   (carry .whl; int8 KV's one-launch store: compiled tests, then 256-token
#           reuse turns with bf16 KV, int8 stored by torch, by the kernel, and with the reader's scales folded; ~7 min)
#   final: bash bench/gpu_pending.sh final   (carry .whl; read floor vs shipped GEMVs, the model vs transformers; ~9 min)
#   tune16: bash bench/gpu_pending.sh tune16   (no carry; the 16-row int4 sweep, then batch 16 on the shipped table and on
#           its winners; ~8 min)
#   all6: bash bench/gpu_pending.sh all6   (no carry; issue 6's five modes and transformers in one run, then the
#         persistent-kernel probe; ~9.5 min)
#   mmt: bash bench/gpu_pending.sh mmt   (no carry; tensor cores with swapped operands, modes 20-22, vs shipped; ~6 min)
#   l2: bash bench/gpu_pending.sh l2   (no carry; L2 prefetch of o and gate_up after qkv: tests, probe, model A/B; ~8 min)
#   tune: bash bench/gpu_pending.sh tune   (no carry; TEST_K=... narrows the compiled tests, MODES=int4,bf16)
# .whl holds the py3.12 wheels of fastapi/starlette/pydantic/uvicorn that `kb engine-serve` needs and the
# GPU image lacks; bench/out/chat_gpu_bundle comes from `.venv/bin/python -m bench.chat_gpu prepare` here.
set -uo pipefail
if [ "${1:-}" = prepare ]; then  # on the CPU box, with .venv set up
  grep -qs '^/.whl/' .git/info/exclude || { mkdir -p .git/info; echo /.whl/ >> .git/info/exclude; }
  for p in fastapi starlette pydantic pydantic-core annotated-types typing-inspection python-multipart uvicorn sniffio xxhash \
      opentelemetry-api; do
    v=$(.venv/bin/pip show "$p" | awk '/^Version/{print $2}')
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "$p==$v" || exit 1
  done
  HF_HUB_OFFLINE=1 .venv/bin/python -m bench.chat_gpu prepare --out bench/out/chat_gpu_bundle
  exit
fi
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
compiled_tests() {  # $1: seconds; $2: pytest -k (empty: all); log in $OUT/tests.log, summary here
  echo "== compiled kernel and fused-op tests (-k \"$2\"; log in \$OUT/tests.log)"
  timeout "$1" python3 -m pytest --noconftest -q -p no:cacheprovider tests/engine/quant/test_gpu_kernels.py \
    tests/engine/quant/test_gpu_h2.py tests/engine/quant/test_gpu_dispatch.py \
    tests/engine/quant/test_tuning.py tests/engine/test_fused_ops.py tests/engine/test_pdl.py tests/engine/test_split_kv.py \
    tests/engine/test_paged_attn_rope.py tests/engine/test_l2_prefetch.py ${2:+-k "$2"} \
    > "$OUT/tests.log" 2>&1
  echo "pytest rc=$?"; grep -E "passed|failed|error" "$OUT/tests.log" | tail -5
  sed -n '/FAILED\|Error/p' "$OUT/tests.log" | head -5
}
model_ab() {  # the whole model, then batch 1 under each of LAUNCHES on one engine; defaults: $1 s, $2 batches, $3 launches
  timeout "${E2E_S:-$1}" python3 bench/quant_e2e.py --out "$OUT" --modes "${MODES:-int4}" --batches "${BATCHES:-$2}" \
    --prefill-tokens "${PREFILL:-512}" --compile-budget-s "${HF_S:-90}" --overlap \
    --launches "${LAUNCHES:-$3}" ${E2E_EXTRA:-} > "$OUT/e2e.log" 2>&1
  grep "launch \|^hf" "$OUT/e2e.log"; e2e_summary
}
sweep_kind() {  # $1: seconds, $2: quant_gpu.py kind, $3: rows; the configs of qkv, o, gate_up, down (the shipped one first)
  timeout "$1" python3 bench/quant_gpu.py kernels --kinds "$2" --ms "$3" --shapes qkv,o,gate_up,down --out "$OUT" 2>&1 \
    | grep -v "^  skip" | tail -12
}
e2e_summary() {  # the table lines of $OUT/e2e.log
  grep -vi warn "$OUT/e2e.log" | grep -E "^\||HF|^== " | tail -16
}
case "${1:-1}" in
  1)
    if [ -z "${SKIP_CHECK:-}" ]; then
      echo "== issue 3: teacher-forced logits vs transformers (bench/engine_check.py)"
      timeout 150 python3 bench/engine_check.py --out "$OUT" 2>&1 | grep -vi warn | tail -14
    fi
    echo "== issue 4: 16 sessions x 5 turns through kb engine-serve (bench/chat_gpu.py)"
    timeout 220 python3 -m bench.chat_gpu run --bundle bench/out/chat_gpu_bundle --out "$OUT" 2>&1 | grep -vi warn | tail -16
    echo "== issue 6: quantized GEMV kernels (bench/quant_gpu.py kernels)"
    timeout 300 python3 bench/quant_gpu.py kernels --out "$OUT" 2>&1 | grep -v "^  skip" | tail -60
    ;;
  check)  # first call of a GPU session: everything unmeasured since the last one, < 9 min
    compiled_tests "${TEST_S:-120}" "${TEST_K:-partials or write_kv or shipped}"  # all of them: > 4 min compiled
    echo "== issue 3: teacher-forced logits vs transformers, with graphs captured at start"
    timeout 90 python3 bench/engine_check.py --out "$OUT" 2>&1 | grep -vi warn | tail -10
    echo "== issue 6: whole model with the shipped configs, prefill/decode profiles, decode with and without lookahead"
    timeout 260 python3 bench/quant_e2e.py --out "$OUT" --modes int4,int8,bf16 --compile-budget-s 60 --profile --overlap \
      > "$OUT/e2e.log" 2>&1
    e2e_summary
    ;;
  pdl)  # issue 6: programmatic dependent launch, A/B inside one process; the whole model with it on
    compiled_tests "${TEST_S:-150}" "${TEST_K:-test_pdl or test_fused_ops or fp16_gemv or partials}"
    timeout 120 python3 bench/pdl_check.py 2>&1 | grep -vi warn | tail -3
    L=${LAUNCHES:-0,1,0,1}  # PDL off / on, twice: the drift
    if [ -z "${SKIP_PROBE:-}" ]; then
      echo "== the int4 GEMVs alone and chains of kernels, graph timing, PDL off / on"
      timeout 150 python3 bench/decode_probe.py --out "$OUT" --parts chain,h2 --ms 1 --launches "$L" 2>&1 \
        | grep -vi warn | tail -8
    fi
    echo "== whole model (PDL on), then batch 1 with PDL off / on on the same engine (graphs captured again)"
    timeout "${E2E_S:-300}" python3 bench/quant_e2e.py --out "$OUT" --modes "${MODES:-int4}" --batches "${BATCHES:-1}" \
      --prefill-tokens "${PREFILL:-512}" --compile-budget-s 45 --overlap --launches "$L" ${E2E_EXTRA:-} > "$OUT/e2e.log" 2>&1
    grep "launch \|^hf" "$OUT/e2e.log"; e2e_summary
    if [ -n "${CHECK:-}" ]; then
      echo "== issue 3: teacher-forced logits vs transformers, graphs captured at start (PDL on)"
      timeout 100 python3 bench/engine_check.py --out "$OUT" 2>&1 | grep -vi warn | tail -10
    fi
    ;;
  graph)  # issue 6: the whole model, then A/B settings at batch 1 in one process (graphs captured again)
    echo "== whole model, then batch 1 under each of LAUNCHES (graphs captured again)"
    model_ab 480 1,16 argmax0,argmax1
    ;;
  amax)  # issue 6: the fp16 GEMV with each row's absmax given (no pass in the kernel), compiled and timed per layer
    compiled_tests "${TEST_S:-90}" "${TEST_K:-(keeps and 128-2-128) or (takes and 128-2-4) or (keeps and 32-1-128)}"
    timeout "${PROBE_S:-150}" python3 bench/decode_probe.py --out "$OUT" --parts h2 --ms "${MS:-1,4}" --amax-in --no-tail \
      2>&1 | grep -vi warn | python3 -c "import json,sys
for l in sys.stdin:
    if not l.startswith('{'): print(l.rstrip()); continue
    r = json.loads(l); print(r['layer'], 'M', r['M'], 'shipped', r.get('current_us'), 'us; absmax given', r.get('amax_in_us'),
        'us; without the split-K sum', r.get('no_tail_us'), 'us; err', r.get('current_err'), r.get('amax_in_err'))"
    ;;
  rowamax)  # issue 6: the norms' row absmax into the one-token GEMV, tested compiled, then A/B in one engine
    compiled_tests "${TEST_S:-150}" "${TEST_K:-absmax or hands or (agree and (16-20 or 16-21 or 16-22 or 5-20 or 3-21 or 2-22)) or (keeps and 128-2-128)}"
    echo "== whole model at batch 1, then A/B settings (they accumulate; graphs captured again for each)"
    model_ab 420 1 amax0,amax1,amax0,amax1
    ;;
  attnpre)  # issue 6: attention loads its metadata and its first old tile before PDL's wait
    compiled_tests "${TEST_S:-150}" "${TEST_K:-split_kv or gemv_waits or model_fused}"
    echo "== whole model at batch 1, then A/B settings (they accumulate; graphs captured again for each)"
    model_ab 430 1 attnpre0,attnpre1,attnpre0,attnpre1
    ;;
  prefetch)  # issue 6: the one-token fp16 GEMV with the next step's words loaded during this step's math
    compiled_tests "${TEST_S:-80}" "${TEST_K:-prefetch or (keeps and 128-2-128) or (takes and 128-2-4)}"
    echo "== one-token int4 sweep, modes with PREFETCH (5th slot 1) and without (shipped config timed first)"
    timeout "${SWEEP_S:-200}" python3 bench/quant_gpu.py kernels --kinds int4k_g128 --ms 1 --shapes "${SHAPES:-gate_up,down,qkv,o}" \
      --modes "${PF_MODES:-5/64/2/2/1,5/64/4/2/1,4/64/2/2/1,5/32/2/2/1,4/32/2/1/1,5/64/2/2/0}" --out "$OUT" 2>&1 \
      | grep -v "^  skip" | tail -6
    echo "== whole model at batch 1 on the sweep's winners, PREFETCH off / on (graphs captured again for each)"
    E2E_EXTRA="--tune $OUT/quant_kernels.json --no-hf" model_ab 260 1 prefetch0,prefetch1,prefetch0,prefetch1
    ;;
  ncu)  # issue 6: the one-token GEMVs against a plain read of their bytes, then under Nsight Compute (~4 min)
    echo "== read floor vs shipped GEMVs (graph timing)"
    timeout "${FLOOR_S:-150}" python3 bench/ncu_gemv.py floor 2>&1 | tee "$OUT/floor.log" | grep -v "^ *$" | tail -14
    echo "== ncu --set full on the four shipped GEMVs and a plain read"
    which ncu || ls /opt/nvidia/nsight-compute/*/ncu
    NCU=$(which ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
    timeout "${NCU_S:-240}" "$NCU" --profile-from-start off --clock-control none --set full --import-source no \
      -o "$OUT/gemv" python3 bench/ncu_gemv.py profile > "$OUT/ncu.log" 2>&1; echo "ncu rc=$?"; tail -3 "$OUT/ncu.log"
    "$NCU" -i "$OUT/gemv.ncu-rep" --page details > "$OUT/gemv_details.txt" 2>&1
    "$NCU" -i "$OUT/gemv.ncu-rep" --page raw --csv > "$OUT/gemv_raw.csv" 2>&1
    grep -E "^  [a-z_0-9]+|Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Theoretical Occ|Memory Throughput" \
      "$OUT/gemv_details.txt" | head -60
    ;;
  wide)  # issue 6: one-token GEMVs over narrower tiles and more splits (more programs), the model on the winners (~9 min)
    [ -n "${TEST_K:-}" ] && compiled_tests "${TEST_S:-100}" "$TEST_K"
    W_MODES=${W_MODES:-5/64/4/2/1,5/32/2/2/1,5/32/4/2/1,5/16/2/2/1,5/16/2/1/1,5/32/2/2/0,5/64/4/2/0}
    echo "== one-token sweep: qkv, o, down over block_n 32/64, split 8/16/32 (shipped config timed first)"
    timeout "${SWEEP_S:-220}" python3 bench/quant_gpu.py kernels --kinds int4k_g128 --ms 1 --shapes qkv,o,down \
      --modes "$W_MODES" --block-ns 32,64 --splits 8,16,32 --max-programs 4224 --out "$OUT/small" 2>&1 \
      | grep -v "^  skip" | tail -4
    echo "== gate_up over block_n 32/64/128, split 1/2/4"
    timeout "${SWEEP2_S:-130}" python3 bench/quant_gpu.py kernels --kinds int4k_g128 --ms 1 --shapes gate_up \
      --modes "${GU_MODES:-$W_MODES}" --block-ns 32,64,128 --splits 1,2,4 --max-programs 4224 --out "$OUT/big" 2>&1 \
      | grep -v "^  skip" | tail -2
    python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
res = None
for part in ("small", "big"):
    try:
        d = json.load(open(f"{out}/{part}/quant_kernels.json"))
    except OSError:
        continue
    if res is None:
        res = d
    else:
        res["rows"] += d["rows"]; res["tuning"].update(d["tuning"])
json.dump(res, open(f"{out}/quant_kernels.json", "w"), indent=1)
print("merged", sorted(res["tuning"]))
PY
    echo "== whole model at batch 1: shipped table (tuned0) against the sweep's winners (tuned1)"
    E2E_EXTRA="--tune $OUT/quant_kernels.json --no-hf" model_ab 240 1 "${LAUNCHES:-tuned0,tuned1,tuned0,tuned1}"
    ;;
  silu)  # issue 6: gate_up's one-token GEMV writing silu(gate) * up itself (SILU_MUL): compiled tests, model A/B (~7 min)
    compiled_tests "${TEST_S:-120}" "${TEST_K:-silu or shipped or prefetch}"
    echo "== whole model at batch 1, gate_up's GEMV with the SiLU off / on (graphs captured again for each)"
    E2E_EXTRA="--no-hf" model_ab 300 "${BATCHES:-1}" silugemv0,silugemv1,silugemv0,silugemv1
    ;;
  tma)  # issue 3: the paged reader's K/V tiles by TMA (paged_attn_triton.TMA): compiled tests, then engine/attn_bench.py
    # --quick at turn, prefill and decode shapes with the TMA variants beside the plan (~3 min)
    timeout 90 python3 -m pytest --noconftest -q -p no:cacheprovider tests/engine/test_split_kv.py 2>&1 | tail -2
    echo "== bench/tma_graph_check.py: TMA tiles inside a CUDA graph, replayed, against eager per-thread loads"
    timeout 60 python3 bench/tma_graph_check.py 2>&1 | tail -2
    [ -n "${NO_ATTN:-}" ] || timeout "${ATTN_S:-200}" python3 -m engine.attn_bench --out "$OUT" --kv bf16 --no-smoke --quick \
      --shapes "${SHAPES:-turn256,turn257,turn512,turn1536,chunk2048_ctx16K,decode_b1_ctx16K,decode_b32}" 2>&1 | grep -vi warn | tail -60
    ;;
  tmaturns)  # issue 3: is the TMA reader worth turning on? Bits and graphs first, then tiles, then the turns
    if [ -z "${TURNS_ONLY:-}" ]; then
      NO_ATTN=1 bash "$0" tma
      echo "== engine/attn_bench.py: every TMA tile shape at the plan's splits (x0) and 2-11 splits"
      timeout "${ATTN_S:-170}" python3 -m engine.attn_bench --out "$OUT" --kv bf16 --no-smoke --quick \
        --shapes "${SHAPES:-turn256,turn257,turn512}" --tma-sweep "${SPLITS:-0,2,3,4,5,6,8,11}" 2>&1 | grep -vi warn | grep -v "^    " | tail -6
      python3 - "$OUT/attn_bench.json" <<'PY'
import json, sys
for shape, x in json.load(open(sys.argv[1])).items():
    if isinstance(x, dict) and "variants" in x:
        rows = sorted((v["ms"], k) for k, v in x["variants"].items() if "ms" in v and v["rel_err"] < 2e-2)
        auto = x["variants"]["paged_auto"]["ms"]
        print(shape, "auto", auto, "| fastest:", "; ".join(f"{k} {ms:.4f}" for ms, k in rows[:8]))
PY
    fi
    for t in ${TMA_SETTINGS:-0 1}; do
      echo "== bench/engine_gpu.py: ten turns of ${TURN_SIZES:-256} tokens to ~15.6K, KB_ENGINE_ATTN_TMA=$t"
      KB_ENGINE_ATTN_TMA=$t timeout "${ENGINE_S:-170}" python3 bench/engine_gpu.py --phase ours --no-compile \
        --out "$OUT/tma$t" --turn-tokens 1536 --turn-sizes "${TURN_SIZES:-256}" \
        --skip "${SKIP:-correctness,ours_decode,ours_multiturn,ours_recompute,int8_kv,sessions,sessions_before_step,restart}" 2>&1 | grep -vi warn | grep -A3 "^turns of"
    done
    ;;
  panels)  # issue 6: int4 weights in panels of the one-token tile (contiguous per program): compiled tests, model A/B, probe
    compiled_tests "${TEST_S:-90}" "${TEST_K:-panel}"
    echo "== whole model at batch 1, int4 weights on rows / in panels (graphs captured again for each)"
    # bench/panel_tune.json: the probe's faster one-token configs for qkv and o (H100, 2026-12-06), as 'tuned'
    E2E_EXTRA="--no-hf --tune bench/panel_tune.json" model_ab "${E2E_S:-300}" "${BATCHES:-1}" \
      "${LAUNCHES:-tuned0,panels1,tuned1,panels0,panels1,tuned0}"
    echo "== per matrix and per layer: plain reads, GEMVs on rows, in panels, a few configs (bench/panel_probe.py)"
    timeout "${PROBE_S:-240}" python3 bench/panel_probe.py > "$OUT/panel_probe.log" 2>&1; echo "rc=$?"
    grep -v "rel_err" "$OUT/panel_probe.log" | cut -c1-300
    ;;
  mma)  # issue 6: the one-token GEMV on tensor cores (mode 6): compiled tests, per-matrix sweep, layer chains, model A/B
    echo "== compiled tests of mode 6 and of the shipped kernels (log in \$OUT/tests.log)"
    timeout "${TEST_S:-120}" python3 -m pytest --noconftest -q -p no:cacheprovider tests/engine/quant/test_gpu_mma.py \
      tests/engine/quant/test_gpu_kernels.py tests/engine/quant/test_gpu_h2.py -k "${TEST_K:-mma or group_asm or silu or shipped}" > "$OUT/tests.log" 2>&1
    echo "pytest rc=$?"; tail -2 "$OUT/tests.log"; sed -n '/FAILED\|Error/p' "$OUT/tests.log" | head -8
    echo "== per matrix and per layer: plain reads, shipped GEMVs, mode-6 configs (bench/mma_probe.py)"
    timeout "${PROBE_S:-200}" python3 bench/mma_probe.py --out "$OUT" > "$OUT/mma_probe.log" 2>&1; echo "rc=$?"
    grep -v '"config"' "$OUT/mma_probe.log" | cut -c1-400
    if [ "${E2E_S:-0}" != 0 ] && [ -s "$OUT/mma_tune.json" ]; then
      echo "== whole model at batch 1: shipped configs vs mode 6 where it won (graphs captured again for each)"
      E2E_EXTRA="--no-hf --tune $OUT/mma_tune.json" model_ab "$E2E_S" "${BATCHES:-1}" "${LAUNCHES:-tuned0,tuned1,tuned0,tuned1}"
    fi
    ;;
  ablate)  # issue 6: where the one-token GEMV's fixed microseconds go (bench/gemv_ablation.py), then PDL's early release A/B
    echo "== ablations of the fp16 GEMV, per matrix and per layer (bench/gemv_ablation.py)"
    timeout "${PROBE_S:-200}" python3 bench/gemv_ablation.py --out "$OUT" > "$OUT/ablation.log" 2>&1; echo "rc=$?"
    grep -v warn "$OUT/ablation.log" | cut -c1-300
    if [ "${E2E_S:-0}" != 0 ] && [ -s "$OUT/ahead_tune.json" ]; then
      echo "== whole model at batch 1: shipped, GEMVs releasing as they start, fp16 GEMVs with all steps ahead (graphs again each)"
      E2E_EXTRA="--no-hf --tune $OUT/ahead_tune.json" model_ab "$E2E_S" "${BATCHES:-1}" \
        "${LAUNCHES:-tuned0,early1,tuned1,early0}"
    fi
    ;;
  split1)  # issue 6: the staged split-1 fp16 GEMVs (qkv, o) and early release, per matrix and in the model (~5 min)
    echo "== the fp16 GEMV with early release, and the ALL_AHEAD configs incl. split 1 (bench/gemv_ablation.py)"
    timeout "${PROBE_S:-150}" python3 bench/gemv_ablation.py --out "$OUT" --variants early > "$OUT/ablation.log" 2>&1
    echo "rc=$?"; grep -v warn "$OUT/ablation.log" | cut -c1-300
    echo "== whole model at batch 1: shipped / the fp16 table with the ahead winners, early release off / on"
    E2E_EXTRA="--no-hf --profile --tune $OUT/ahead_tune.json" model_ab "${E2E_S:-260}" 1 \
      "${LAUNCHES:-tuned0,tuned1,early1,early0,tuned0,skipnorm1,skiprope1,skipattn1}"
    grep -A 18 "decode 32 tokens" "$OUT/e2e.log" | cut -c1-160
    ;;
  sweep24|teal)  # issue 6: 2:4's (teal: TEAL 40 %'s) launch configs swept per matrix, then the model on its
    # heuristic configs / the sweep's (~5 min)
    if [ "$1" = teal ]; then kind=int4_g128_teal; mode=int4_teal; else kind=int4_24; mode=int4_24; fi
    echo "== $kind kernels, heuristic (shipped) config timed first, then the sweep (bench/quant_gpu.py kernels)"
    sweep_kind "${SWEEP_S:-130}" "$kind" "${MS:-1,16}"
    echo "== whole model, $mode: heuristic configs / the sweep's, batch 1 (graphs captured again for each)"
    MODES=$mode PREFILL="${PREFILL:-2048}" E2E_EXTRA="--no-hf --profile --tune $OUT/quant_kernels.json" \
      model_ab "${E2E_S:-200}" "${BATCHES:-1,16}" "${LAUNCHES:-tuned0,tuned1}"
    grep -A 12 "decode 32 tokens" "$OUT/e2e.log" | cut -c1-160
    ;;
  final7)  # issue 6: the shipped split-1 qkv/o and early release, compiled tests, then the model with A/Bs (~6 min)
    if [ "${TEST_S:-150}" != 0 ]; then
      compiled_tests "${TEST_S:-150}" "${TEST_K:-shipped or tile_a_split or small_grids or prefetching}"
    fi
    if [ "${SWEEP24_S:-0}" != 0 ]; then  # 2:4's one-token configs: the heuristic's against the sweep's best
      echo "== 2:4 int4 kernels at one token (bench/quant_gpu.py kernels --kinds int4_24 --ms 1)"
      sweep_kind "$SWEEP24_S" int4_24 1
    fi
    echo "== whole model, shipped configs: batch 1 and 16; A/B early release off / on, decode attention a tile a split"
    E2E_EXTRA="--no-hf --decode-tokens ${DECODE:-256}" PREFILL=2048 model_ab "${E2E_S:-300}" "${BATCHES:-1,16}" \
      "${LAUNCHES:-early0,early1,dsplit1,dsplit0,early0}"
    ;;
  candidates)  # issue 6: one-token configs with early release per matrix and layer, the int8 LM head's, then
    # the model on the chain's winners (~7 min)
    echo "== one-token configs with early release (bench/gemv_candidates.py)"
    timeout "${PROBE_S:-200}" python3 bench/gemv_candidates.py --out "$OUT" > "$OUT/candidates.log" 2>&1
    echo "rc=$?"; grep -v warn "$OUT/candidates.log" | cut -c1-200
    E2E_EXTRA="--no-hf --decode-tokens ${DECODE:-256} --tune $OUT/candidates_tune.json" PREFILL=2048 \
      model_ab "${E2E_S:-240}" "${BATCHES:-1}" "${LAUNCHES:-tuned1,tuned0,tuned1,tuned0}"
    ;;
  final8)  # issue 6: the shipped table's sparse entries compiled, then dense int4, TEAL and 2:4 from the shipped
    # tables (no --tune), batch 1 and 16 (~7 min)
    if [ "${TEST_S:-90}" != 0 ]; then compiled_tests "${TEST_S:-90}" "${TEST_K:-shipped and (teal or 24)}"; fi
    echo "== whole model from the shipped tables: int4, int4 + TEAL 40 %, int4 + 2:4; batch 1 and 16"
    MODES="${MODES:-int4,int4_teal,int4_24}" E2E_EXTRA="--no-hf --decode-tokens ${DECODE:-256}" PREFILL=2048 \
      model_ab "${E2E_S:-330}" "${BATCHES:-1,16}" "${LAUNCHES:-}"
    ;;
  ropeattn)  # issue 6: RoPE + K/V store inside decode attention: compiled tests, then int4 b1/b16 with the A/B (~8 min)
    compiled_tests "${TEST_S:-150}" "${TEST_K:-rope or split or tile}"
    echo "== whole model, int4, shipped tables; batch 1 with RoPE in its own launch / in attention (graphs captured again)"
    MODES=int4 E2E_EXTRA="--no-hf --decode-tokens ${DECODE:-256}" PREFILL=2048 \
      model_ab "${E2E_S:-330}" "${BATCHES:-1,16}" "${LAUNCHES:-ropeattn0,ropeattn1,ropeattn0,ropeattn1}"
    ;;
  l2)  # issue 6: o's and a share of gate_up's weights asked into L2 after qkv's GEMV: compiled tests, the GEMV
    # probe, then int4 batch 1 with it off / on at several shares and by lines (~8 min)
    compiled_tests "${TEST_S:-90}" "${TEST_K:-l2_prefetch}"
    echo "== one GEMV after a flushed L2, with and without the prefetch (bench/l2_probe.py)"
    timeout 90 python3 bench/l2_probe.py 2>&1 | grep -vi warn | tail -10
    MODES=int4 E2E_EXTRA="--no-hf --decode-tokens ${DECODE:-256}" \
      model_ab "${E2E_S:-400}" "${BATCHES:-1}" "${LAUNCHES:-l20,l21,l2gu0,l2gu50,l2gu25,l2lines1,l2lines0,l20}"
    ;;
  sparse9)  # issue 6: TEAL then 2:4 from the shipped tables in one process (graph batches up to 16, decode graphs
    # up to 4K tokens captured at start), each mode's leftover GPU memory and its holders (~9 min)
    MODES="${MODES:-int4_teal,int4_24}" E2E_EXTRA="--no-hf --decode-tokens ${DECODE:-256} --max-seqs 16 \
      --precapture-tokens 4096" PREFILL=2048 model_ab "${E2E_S:-560}" "${BATCHES:-1,16}" ""
    grep -o '"left_after_gib[^]]*' "$OUT/e2e.log" | cut -c1-600
    ;;
  gemvpre)  # issue 6: the fp16 GEMV's first step of weights before PDL's wait (PRE_WAIT): compiled tests, model A/B (~7 min)
    compiled_tests "${TEST_S:-120}" "${TEST_K:-prefetching or silu or shipped}"
    echo "== whole model at batch 1, the GEMV's first weights after / before PDL's wait (graphs captured again for each)"
    E2E_EXTRA="--no-hf" model_ab 300 "${BATCHES:-1}" gemvpre0,gemvpre1,gemvpre0,gemvpre1
    ;;
  pgraph)  # issue 3: short prefills as CUDA graphs (prefill_graph_tokens 0 vs 512): TTFT alone / after a recompute / reuse
    echo "== prefill graphs captured for real: same logits as eager, padding only in the scratch block"
    timeout 100 python3 -m pytest --noconftest -q -p no:cacheprovider tests/engine/test_prefill_graphs.py \
      tests/engine/test_kv_int8_store.py -k "not chat" 2>&1 | tail -3
    timeout "${PROBE_S:-470}" python3 bench/prefill_probe.py --out "$OUT" --disk off --graph-tokens "${GRAPH_TOKENS:-0,512}" \
      --kv-dtype "${KV:-auto,int8}" ${QUANT:+--quant "$QUANT"} --reps 5 > "$OUT/probe.log" 2>&1; echo "rc=$?"
    grep -E "graphs [0-9]+ .*(start|median|profile)" "$OUT/probe.log" | cut -c1-220
    ;;
  chatgraph)  # issue 3 under load: 16 sessions x 5 turns through engine-serve, prefill graphs off / on (mixed steps)
    for g in ${GRAPH_TOKENS:-0 512}; do
      echo "== prefill_graph_tokens $g"
      timeout "${CHAT_S:-260}" python3 -m bench.chat_gpu run --bundle bench/out/chat_gpu_bundle --out "$OUT/graphs$g" \
        --prefill-graph-tokens "$g" 2>&1 | grep -vi warn | tail -8
    done
    ;;
  int8kv)  # issue 3: int8 KV stored by one kernel (engine.kv_int8_store) against torch's store, reuse turns of 256
    echo "== int8 KV store and prefill graphs, compiled and captured"
    timeout 150 python3 -m pytest --noconftest -q -p no:cacheprovider tests/engine/test_kv_int8_store.py \
      tests/engine/test_prefill_graphs.py -k "not chat" 2>&1 | tail -3
    timeout "${INT8_S:-420}" python3 bench/engine_gpu.py --phase ours --out "$OUT" \
      --skip correctness,ours_decode,sessions,restart ${ENGINE_ARGS:-} > "$OUT/int8kv.log" 2>&1
    echo "rc=$?"; grep -E "^(turns of|   |int8_multiturn|errors)" "$OUT/int8kv.log" | cut -c1-240
    ;;
  final)  # issue 6's closing figures: the read floor against the shipped GEMVs, then the model against transformers
    echo "== read floor vs shipped GEMVs (graph timing)"
    timeout "${FLOOR_S:-120}" python3 bench/ncu_gemv.py floor > "$OUT/floor.log" 2>&1; grep layer "$OUT/floor.log"
    echo "== whole model, modes ${MODES:-int4,bf16}, transformers compiled bf16 in the same process"
    timeout "${E2E_S:-450}" python3 bench/quant_e2e.py --out "$OUT" --modes "${MODES:-int4,bf16}" --batches 1,16 \
      --prefill-tokens 512 --compile-budget-s "${HF_S:-60}" --overlap > "$OUT/e2e.log" 2>&1
    e2e_summary
    ;;
  tune16)  # issue 6: int4 at 16 rows, where the H100 has no configs of its own (the H200's serve it; int4's batch-16
    # step, 4768 us, was slower than int8's, 4512, on 2026-12-07): the 16-row sweep, then the model at batch 16 on the
    # shipped table and on the sweep's winners, one process each (~8 min)
    echo "== issue 6: 16-row int4 sweep (bench/quant_gpu.py kernels --ms 16)"
    timeout "${SWEEP_S:-300}" python3 bench/quant_gpu.py kernels --kinds int4k_g128 --ms 16 --out "$OUT" 2>&1 \
      | grep -v "^  skip" | tail -12
    for tune in "" "--tune $OUT/quant_kernels.json"; do
      echo "== whole model, int4, batch 16, ${tune:-shipped table}"
      timeout "${E2E_S:-100}" python3 bench/quant_e2e.py --out "$OUT" --modes int4 --batches 16 --prefill-tokens 512 \
        --overlap --no-hf --max-seqs 16 --precapture-tokens 0 $tune > "$OUT/e2e.log" 2>&1
      grep -E "^  int4: batch" "$OUT/e2e.log"
    done
    ;;
  all6)  # issue 6's table in one run: every mode (bf16, int8, int4, int4 + 2:4, int4 + TEAL) and transformers compiled
    # bf16, prefill 2K; then, in the time left, bench/persistent_probe.py; ~9.5 min. No graphs at start and batches
    # to 16 (the warm-up runs capture the graphs of batches 1 and 16), to fit the call. Until gpu.SPARSE24_MAX_ROWS,
    # 2:4 at 16 rows took ~0.57 s a step and never ended here (2026-12-07, eighth session). The `  mode: ... at N s`
    # lines of e2e.log say when each stage of a mode ended, with its batch rows
    timeout "${E2E_S:-540}" python3 bench/quant_e2e.py --out "$OUT" --modes "${MODES:-int4,int8,bf16,int4_teal,int4_24}" \
      --batches 1,16 --prefill-tokens 2048 --compile-budget-s "${HF_S:-60}" --overlap --precapture-tokens 0 \
      --max-seqs 16 > "$OUT/e2e.log" 2>&1
    grep -E "^  [a-z0-9_]+: .* at [0-9]+ s$" "$OUT/e2e.log" | tail -30
    e2e_summary
    echo "== persistent probe"
    timeout "${PROBE_S:-60}" python3 bench/persistent_probe.py --blocks "${PROBE_BLOCKS:-4096:2:8}" --per-sm 1,2 \
      > "$OUT/probe.log" 2>&1; tail -8 "$OUT/probe.log"
    ;;
  mmt)  # issue 6: the tensor-core kernel with swapped operands (modes 20-22) against the shipped configs
    timeout "${SWEEP_S:-400}" python3 bench/quant_gpu.py kernels --kinds int4k_g128 --ms "${MS:-16}" \
      --shapes "${SHAPES:-qkv,o,gate_up,down}" --modes "${MODES:-20/16,21/16,22/16,22/32}" --out "$OUT" 2>&1 | grep -v "^  skip" | tail -12
    ;;
  tune)  # after a kernel change: compiled tests (log in $OUT), the one-token int4 sweep, the model with its winners
    compiled_tests "${TEST_S:-170}" "${TEST_K:-}"
    echo "== issue 6: one-token int4 GEMV sweep (bench/quant_gpu.py kernels --ms 1 --gemv-only)"
    timeout "${SWEEP_S:-230}" python3 bench/quant_gpu.py kernels --kinds int4k_g128 --ms 1 --gemv-only --out "$OUT" \
      2>&1 | grep -v "^  skip" | tail -8
    echo "== issue 6: whole model with the sweep's one-token winners"
    timeout "${E2E_S:-200}" python3 bench/quant_e2e.py --out "$OUT" --modes "${MODES:-int4,bf16}" --compile-budget-s 60 \
      --tune "$OUT/quant_kernels.json" --overlap > "$OUT/e2e.log" 2>&1
    e2e_summary
    ;;
  full3)  # issue 3 complete, transformers baselines in the same run: correctness, decode, 1,536- and 256-token
    # conversations, 32 sessions of ~15.4K tokens (int8 KV) from the CPU tier, restart; ~9.5 min
    timeout "${ENGINE_S:-585}" python3 bench/engine_gpu.py --phase all --compile-budget-s "${HF_S:-60}" --out "$OUT" \
      --session-first-tokens 13056 --sessions-kv-dtype int8 --cpu-cache-gb 8 --sessions-cpu-cache-gb 40 \
      --skip "${SKIP:-int8_kv}" ${ENGINE_ARGS:-} 2>&1 | grep -vi warn | tail -40
    ;;
  feed)  # issue 3: conversations back to back and with 400 ms between turns (the answer's last token fed meanwhile,
    # engine.answer_feed), both turn sizes, the new tokens alone as sent and as the engine saw them; then the 32
    # sessions of ~15.4K tokens (int8 KV) from the CPU tier, as in full3; ~6 min
    timeout "${ENGINE_S:-560}" python3 bench/engine_gpu.py --phase ours --no-compile --out "$OUT" --think-ms 400 \
      --session-first-tokens 13056 --sessions-kv-dtype int8 --cpu-cache-gb 8 --sessions-cpu-cache-gb 40 \
      --skip "${SKIP:-correctness,ours_decode,int8_kv,restart}" 2>&1 | grep -vi warn | tail -32
    ;;
  engine)  # issue 3 without the transformers baselines (those: bench/engine_gpu.py --phase all), ~9 min
    timeout "${ENGINE_S:-560}" python3 bench/engine_gpu.py --phase ours --no-compile --out "$OUT" ${ENGINE_ARGS:-} 2>&1 \
      | grep -vi warn | tail -30
    ;;
  restore)  # issue 3: layer-wise restores from the CPU tier: the compiled copy test, then the run above with
    # 32 sessions of ~15.4K tokens (int8 KV) restored before the step (the old way) and layer by layer; ~8 min
    echo "== compiled: tests/engine/test_kv_restore.py -k lands"
    timeout 150 python3 -m pytest --noconftest -q -p no:cacheprovider tests/engine/test_kv_restore.py -k lands 2>&1 | tail -3
    echo "== bench/restore_probe.py: a 15.4K history back from the CPU tier each turn (int8 KV)"
    timeout "${PROBE_S:-150}" python3 bench/restore_probe.py --out "$OUT" 2>&1 | grep -vi warn | tail -8
    echo "== bench/engine_gpu.py: 256-token turns, then 32 sessions of ~15.4K tokens, before the step / layer-wise"
    timeout "${ENGINE_S:-400}" python3 bench/engine_gpu.py --phase ours --no-compile --out "$OUT" \
      --turn-tokens 256 --turn-sizes 256 \
      --skip "${SKIP:-correctness,ours_decode,int8_kv,restart}" --session-first-tokens "${FIRST:-13056}" \
      --sessions-kv-dtype int8 --cpu-cache-gb 8 --sessions-cpu-cache-gb 40 --sessions-layerwise on ${SESSIONS_AB---sessions-ab} ${ENGINE_ARGS:-} 2>&1 \
      | grep -vi warn | tail -40
    ;;
  bus)  # issue 3: pinned host -> GPU by the copy engine against the restore kernel, programs x chunk bytes, and
    # the copy engines fed a layer's pieces in one cuMemcpyBatchAsync (the probe's copy_batch) (~1 min); on 2026-12-06
    # the kernel read 49 GB/s on one H100 and 29 on another (copy engine 54-55)
    echo "== compiled: tests/engine/test_kv_restore.py -k 'lands or reads_how_many or graph_holding'"
    timeout 150 python3 -m pytest --noconftest -q -p no:cacheprovider tests/engine/test_kv_restore.py \
      -k "lands or reads_how_many or graph_holding" 2>&1 | tail -3
    echo "== bench/graph_event_probe.py: when a graph's external event wait takes the event's record"
    timeout 30 python3 bench/graph_event_probe.py 2>&1 | tail -3
    timeout "${BUS_S:-120}" python3 bench/h2d_probe.py --out "$OUT" --programs "${PROGRAMS:-64,132,264,528,1056}" \
      --chunks "${CHUNKS:-4096,16384,65536}" 2>&1 | grep -E '^\{|Error|Traceback|File' | head -8
    ;;
  graphrestore)  # issue 3: CPU-tier restores inside the prefill graphs: the compiled copy tests, the probe
    # (before the step / in the graph / eagerly layer by layer, with an answers check), then turns16k's
    # engine run without the attention benchmark; ~8 min
    echo "== compiled: tests/engine/test_kv_restore.py -k 'lands or reads_how_many or graph_holding'"
    timeout 150 python3 -m pytest --noconftest -q -p no:cacheprovider tests/engine/test_kv_restore.py \
      -k "lands or reads_how_many or graph_holding" 2>&1 | tail -3
    echo "== bench/restore_probe.py: a 15.4K history back from the CPU tier each turn (int8 KV)"
    timeout "${PROBE_S:-150}" python3 bench/restore_probe.py --out "$OUT" ${PROBE_ARGS:-} 2>&1 | grep -vi warn | tail -8
    [ -n "${NO_ENGINE:-}" ] || ATTN=none bash "$0" turns16k
    ;;
  turns16k)  # issue 3: the 15.6K conversation of 256-token turns (tails, finer buckets), 32 sessions of ~15.4K
    # tokens (int8 KV) restored before the step / layer by layer, the reader's tiles at a turn's shape; ~7-9 min.
    # ATTN=quick: first the reader's plan against the plan before it at turn shapes (bf16, int8), no sweep;
    # ATTN=none: no attention benchmark
    attn() {  # $1: seconds, then engine.attn_bench's arguments
      local s=$1; shift
      timeout "$s" python3 -m engine.attn_bench --out "$OUT" --kv bf16,int8 --no-smoke "$@" 2>&1 | grep -vi warn | tail -24
      python3 - "$OUT/attn_bench.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for shape, x in r.items():
    if not isinstance(x, dict) or "variants" not in x:
        continue
    rows = sorted((v["ms"], k, v["tflops"], v["rel_err"]) for k, v in x["variants"].items() if "ms" in v)
    print(shape, "fastest:", "; ".join(f"{k} {ms:.4f} ms {tf} TF/s err {e}" for ms, k, tf, e in rows[:6]))
PY
    }
    if [ "${ATTN:-}" = quick ]; then
      echo "== engine/attn_bench.py --quick: the plan (auto) against the plan before it, turn shapes"
      attn "${ATTN_S:-100}" --quick --shapes turn256,turn257,turn512,turn1536
    fi
    echo "== bench/engine_gpu.py: 256-token turns over ~15.4K, then 32 sessions of ~15.4K, before the step / layer-wise"
    timeout "${ENGINE_S:-380}" python3 bench/engine_gpu.py --phase ours --no-compile --out "$OUT" \
      --turn-tokens 1536 --turn-sizes 256 \
      --skip "${SKIP:-correctness,ours_decode,ours_multiturn,ours_recompute,int8_kv,restart}" \
      --session-first-tokens 13056 --sessions-kv-dtype int8 --cpu-cache-gb 8 --sessions-cpu-cache-gb 40 \
      --sessions-layerwise on --sessions-ab ${ENGINE_ARGS:-} 2>&1 | grep -vi warn | tail -30
    if [ "${ATTN:-sweep}" = sweep ]; then
      echo "== engine/attn_bench.py: 257 new tokens over 15.6K keys, every tile shape x splits, bf16 and int8 KV"
      attn "${ATTN_S:-200}" --shapes turn257 --sweep "${SPLITS:-2,3,4}"
    fi
    ;;
  kernels)  # issue 6: the kernel tests compiled on the GPU, then the K-packed int4 / int8 sweep
    echo "== kernel and fused-op tests, compiled (pytest --noconftest: the root conftest needs the DB stack)"
    timeout 120 python3 -m pytest --noconftest -q -p no:cacheprovider -x tests/engine/quant/test_gpu_kernels.py tests/engine/quant/test_gpu_h2.py tests/engine/quant/test_gpu_dispatch.py \
      tests/engine/test_fused_ops.py 2>&1 | tail -8
    echo "== issue 6: quantized GEMV kernels (bench/quant_gpu.py kernels)"
    timeout "${SWEEP_S:-420}" python3 bench/quant_gpu.py kernels --kinds "${KINDS:-int8,int4k_g128,int4k_g64}" --ms "${MS:-1,4,16}" \
      --out "$OUT" 2>&1 | grep -v "^  skip" | tail -60
    ;;
  2)
    echo "== issue 6: whole-model decode, bf16/int8/int4/2:4/TEAL vs HF compiled (bench/quant_e2e.py)"
    tune=()
    [ -f bench/out/quant_kernels.json ] && tune=(--tune bench/out/quant_kernels.json)
    timeout "${E2E_S:-560}" python3 bench/quant_e2e.py --out "$OUT" "${tune[@]}" ${E2E_ARGS:-} 2>&1 | grep -vi warn | tail -40
    ;;
esac
