#!/usr/bin/env bash
# One call of the workplace's lent GPU machine (the `device` tool). The machine has PyTorch but neither the
# albumentations/torchinfo stack nor the data, and a call carries at most 64 MiB: wheels travel in .whl/, the shared
# data set in three ~43 MiB pieces, one per call (.dev/p0, .dev/p1, .dev/p2), kept on the machine while it is warm.
#   bash bench/gpu_session.sh check            GPU smoke runs (synthetic data), torchrun+NCCL, cifarkit bench
#   bash bench/gpu_session.sh stash            just keep the carried data piece
#   bash bench/gpu_session.sh train NAME ARGS  `cifarkit train` on the real set into /root/runs/NAME
# Logs and the runs' small files (no weights) come back in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:/tmp/site" CIFARKIT_CACHE=/root/cifarkit-cache
OUT=${OUT:-/tmp/out}
[ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl || exit 1
mkdir -p /root/stage /root/runs && cp -n .dev/p*/* /root/stage/ 2>/dev/null
DATA=/root/cifar10-png.tar.gz
SHA=d5fab8bb4066dc1cebb8304239fe322e333e66dfed6572ad1f07755bcdf37bf6  # ../shared/datasets/README.md
ls -la /root/stage

pack() {  # the runs' small files (plots, json, csv, report, logs: no weights) into one archive
    (cd /root/runs && tar --exclude='*.pt' --exclude=checkpoints -czf "$OUT/runs-$1.tar.gz" .)
}

case "$1" in
check)
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import torch, albumentations, torchinfo; print('torch', torch.__version__, torch.cuda.get_device_name(),
'albumentations', albumentations.__version__)"
    time python3 -m cifarkit train --data synthetic --epochs 2 --lr-find-iters 30 --tta --out /root/runs/syn \
        >"$OUT/check.log" 2>&1; tail -5 "$OUT/check.log"
    time python3 -m cifarkit train --data synthetic --epochs 2 --lr-find-iters 30 --compile --no-plots \
        --out /root/runs/syn-compile >>"$OUT/check.log" 2>&1; tail -4 "$OUT/check.log"
    time python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m cifarkit train --data synthetic \
        --epochs 1 --lr-find-iters 20 --no-plots --out /root/runs/ddp >>"$OUT/check.log" 2>&1; tail -3 "$OUT/check.log"
    python3 -m cifarkit bench --device cuda --steps 20 --repeats 5 2>&1 | tee "$OUT/bench-cuda.txt"
    pack check ;;
stash) ;;
train)
    name=$2; shift 2
    if [ ! -f $DATA ]; then
        cat /root/stage/tmp_part0* > $DATA && echo "$SHA  $DATA" | sha256sum -c || exit 1
    fi
    /usr/bin/time -f "wall %e s" python3 -m cifarkit train --data $DATA --out "/root/runs/$name" "$@" \
        >"/root/runs/$name.log" 2>&1
    tr '\r' '\n' <"/root/runs/$name.log" | grep -E "^epoch +[0-9]+/[0-9]+ \||final_|^wall|steps; LRMIN|rror" | tail -3
    pack "$name" ;;
esac
