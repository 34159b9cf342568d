# old (main) vs new (worktree) code: the same numbers? one thread each, sequential
set -x
for code in main wt-chunks; do
  for adapter in smollm2-135m-joint-more-exact smollm2-135m-joint-more; do
    out=/tmp/eq/$code/$adapter
    mkdir -p $out
    (cd /work/$code && PYTHONPATH=/work/$code python -m sharedllm eval heldout --methods sharedllm --adapter adapters/$adapter --label x --threads 1 --domains books --lengths 8K --max-windows 2 --output $out)
    (cd /work/$code && PYTHONPATH=/work/$code python -m sharedllm eval passkey --methods sharedllm --adapter adapters/$adapter --label x --threads 1 --lengths 16K --trials 1 --depths 0.5 --seed 0 --output $out)
  done
done
