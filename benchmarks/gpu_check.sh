#!/usr/bin/env bash
# Run compactify's CUDA and TensorRT paths on a GPU machine, in one command, and say
# plainly what ran, what was skipped (and why) and what failed.
#
#   PYTHONPATH=. bash benchmarks/gpu_check.sh          # from the repository root
#   PYTHON=/opt/venv/bin/python bash benchmarks/gpu_check.sh
#
# It installs nothing: it uses the machine's python with whatever torch / onnx /
# onnxruntime / tensorrt it has, and reports the packages it lacks (onnxsim, click, rich
# and tensorrt are often absent on GPU images). Steps:
#   1. versions: nvidia-smi, python packages, ONNX Runtime providers;
#   2. the GPU test selection: pytest -m "cuda or tensorrt";
#   3. a short CUDA latency comparison, expanded vs contracted (vs the hand-written compact
#      model), timed with CUDA events, interleaved A/B.
# Exit status: 0 when nothing failed (skips are listed), 1 when something failed.

set -u
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
OUT_DIR=${OUT_DIR:-$(mktemp -d -t compactify-gpu-check.XXXXXX)}
mkdir -p "$OUT_DIR"

ran=()
skipped=()
failed=()
section() { printf '\n=== %s ===\n' "$1"; }

# ---------------------------------------------------------------- 1. versions
section "machine"
if command -v nvidia-smi >/dev/null 2>&1; then
    if nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; then
        ran+=("nvidia-smi")
    else
        failed+=("nvidia-smi (exit $?)")
    fi
else
    skipped+=("nvidia-smi: not on PATH")
fi

if ! command -v "$PY" >/dev/null 2>&1; then
    echo "no python interpreter '$PY'; set PYTHON=/path/to/python"
    exit 1
fi

"$PY" - <<'EOF'
import importlib
import importlib.metadata
import sys

print(f"python       {sys.version.split()[0]} ({sys.executable})")
DISTRIBUTIONS = {"sklearn": "scikit-learn"}
for name in ["torch", "numpy", "onnx", "onnxruntime", "onnxscript", "onnxsim", "tensorrt",
             "click", "rich", "pytest", "hypothesis", "safetensors", "sklearn"]:
    try:
        importlib.import_module(name)
    except Exception as exc:  # report, never stop: this step only describes the machine
        print(f"{name:12s} MISSING ({type(exc).__name__})")
        continue
    try:
        version = importlib.metadata.version(DISTRIBUTIONS.get(name, name))
    except importlib.metadata.PackageNotFoundError:
        version = "present"
    print(f"{name:12s} {version}")
try:
    import torch
    if torch.cuda.is_available():
        print(f"torch cuda   {torch.version.cuda}, device 0: {torch.cuda.get_device_name(0)}, "
              f"cudnn {torch.backends.cudnn.version()}")
    else:
        print("torch cuda   NOT AVAILABLE (torch.cuda.is_available() is False)")
except Exception as exc:
    print(f"torch        cannot be used: {exc}")
try:
    import onnxruntime
    print(f"ORT providers {onnxruntime.get_available_providers()}")
except Exception:
    pass
EOF
[ $? -eq 0 ] && ran+=("versions") || failed+=("versions script")

# ---------------------------------------------------------------- 2. GPU test selection
section "GPU tests: pytest -m 'cuda or tensorrt'"
if ! "$PY" -c "import pytest" >/dev/null 2>&1; then
    skipped+=("GPU tests: pytest is not installed")
else
    log="$OUT_DIR/gpu_tests.log"
    # --continue-on-collection-errors: a test module that needs a package this machine
    # lacks must not hide the GPU tests of the others; its error is reported below.
    "$PY" -m pytest tests -m "cuda or tensorrt" -rfEs -q -p no:cacheprovider \
        --continue-on-collection-errors 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    summary=$(grep -E "^(=+ )?[0-9]+ (passed|failed|skipped|deselected|error)|no tests ran" "$log" | tail -1)
    summary=${summary//=/}
    case $rc in
        0)
            if [[ "$summary" == *passed* ]]; then
                ran+=("GPU tests:${summary}")
            else
                skipped+=("GPU tests: every selected test skipped:${summary}")
            fi
            ;;
        5) skipped+=("GPU tests: none selected:${summary}") ;;
        *) failed+=("GPU tests (pytest exit $rc):${summary}") ;;
    esac
    n_skip=$(grep -c "^SKIPPED" "$log" || true)
    if [ "$n_skip" -gt 0 ]; then
        skipped+=("GPU tests: $n_skip skip line(s), reasons above (SKIPPED ...)")
    fi
fi

# ---------------------------------------------------------------- 3. CUDA latency
section "CUDA latency: expanded vs contracted"
latency_log="$OUT_DIR/latency.log"
"$PY" - <<'EOF' 2>&1 | tee "$latency_log"
"""Exit 0: measured; 3: could not run here (reason printed); anything else: failed."""
import math
import sys

try:
    import torch
except Exception as exc:
    print(f"SKIP: torch is not importable ({exc})")
    sys.exit(3)
if not torch.cuda.is_available():
    print("SKIP: needs a CUDA device (torch.cuda.is_available() is False)")
    sys.exit(3)
try:
    from compactify.models import create_model
except Exception as exc:
    print(f"SKIP: compactify.models is not importable ({type(exc).__name__}: {exc})")
    sys.exit(3)
try:
    from compactify.converter.pipeline.contraction import contract
except Exception as exc:
    contract = None
    print(f"note: the contraction engine is not importable ({type(exc).__name__}: {exc}); "
          "timing expanded against the hand-written compact model only")

torch.backends.cudnn.allow_tf32 = False  # fp32 outputs comparable with the CPU reference
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.benchmark = True
device = torch.device("cuda")

CASES = [  # (expanded name, compact name, kwargs, input size)
    ("smallnet7-ck+fc", "smallnet7", {}, 32),
    ("resnet18-cl", "resnet18", {"num_classes": 100}, 224),
]
WARMUP, ROUNDS = 20, 200


def randomize_(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / m.weight[0].numel()))
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
    return model.eval()


def time_interleaved(models, x):
    """p50 milliseconds per model; rounds run A B C, B C A, ... so drift hits all alike."""
    start = [torch.cuda.Event(enable_timing=True) for _ in models]
    end = [torch.cuda.Event(enable_timing=True) for _ in models]
    samples = [[] for _ in models]
    with torch.inference_mode():
        for r in range(WARMUP + ROUNDS):
            for k in [(i + r) % len(models) for i in range(len(models))]:
                torch.cuda.synchronize()
                start[k].record()
                models[k](x)
                end[k].record()
                end[k].synchronize()
                if r >= WARMUP:
                    samples[k].append(start[k].elapsed_time(end[k]))
    return [sorted(s)[len(s) // 2] for s in samples]


failures = 0
for expanded_name, compact_name, kwargs, size in CASES:
    print(f"\n{expanded_name} vs {compact_name} (input {size}x{size})")
    try:
        expanded = randomize_(create_model(expanded_name, **kwargs), 0)
        models = {"expanded": expanded}
        if contract is not None:
            contracted = contract(expanded, (1, 3, size, size)).compact
            models["contracted"] = contracted
        models["hand-written"] = randomize_(create_model(compact_name, **kwargs), 1)
        for name in list(models):
            models[name] = models[name].to(device)
        for batch in (1, 32):
            x = torch.randn(batch, 3, size, size, device=device)
            if "contracted" in models and batch == 1:
                with torch.inference_mode():
                    ref = models["expanded"](x).double()
                    got = models["contracted"](x).double()
                rel = float((got - ref).abs().max() / ref.abs().max())
                print(f"  contracted vs expanded on CUDA: max error {rel:.2e} of the output scale")
            try:
                p50 = time_interleaved(list(models.values()), x)
            except Exception as exc:  # a model that only runs at the batch it was captured with
                print(f"  batch {batch}: not timed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
                continue
            base = p50[0]
            parts = [f"{n} {t:.3f} ms (x{t / base:.2f})" for n, t in zip(models, p50)]
            line = f"  batch {batch:3d}: " + ", ".join(parts)
            if "contracted" in models:
                line += f"; contracted / hand-written = {p50[1] / p50[-1]:.2f}"
            print(line)
    except Exception as exc:
        failures += 1
        print(f"  FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
sys.exit(1 if failures else 0)
EOF
rc=${PIPESTATUS[0]}
case $rc in
    0) ran+=("CUDA latency comparison") ;;
    3) skipped+=("CUDA latency comparison: $(grep -m1 '^SKIP:' "$latency_log" | sed 's/^SKIP: //')") ;;
    *) failed+=("CUDA latency comparison (exit $rc)") ;;
esac

# ---------------------------------------------------------------- summary
section "summary"
echo "logs: $OUT_DIR"
for item in "${ran[@]+"${ran[@]}"}"; do echo "ran:          $item"; done
for item in "${skipped[@]+"${skipped[@]}"}"; do echo "did not run:  $item"; done
for item in "${failed[@]+"${failed[@]}"}"; do echo "FAILED:       $item"; done
if [ ${#failed[@]} -gt 0 ]; then
    exit 1
fi
exit 0
