"""``python -m triton_dequant.demo``: the main job, on any machine.

1. Compiles a row-wise int4 dequantize kernel for Hopper (sm_90) on this
   machine, GPU or not, and prints the PTX tl.dequantize produced.
2. Runs it: on a GPU for real (and times it against a device copy), without one
   in Triton's interpreter; checks the result bit for bit against the exact
   reference.
3. Quantizes a Llama-shaped model (random weights) with ``quantize_model`` to int4
   groups of 128, prints the weight memory saved, generates a few tokens greedily
   and checks them against the same model whose ``nn.Linear`` weights are the
   dequantized int4 weights. On a GPU: Llama-3-8B widths with 4 layers, fp16,
   decode tokens per second against fp16 ``nn.Linear``, both replayed as CUDA
   graphs. On a CPU: a small model in fp32 (seconds).
"""
from __future__ import annotations

import copy
import dataclasses
import os
import sys
import time

import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:  # must be set before kernels are decorated
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import triton_dequant  # noqa: E402,F401
from triton_dequant import QuantizedLinear, quantize_model  # noqa: E402
from triton_dequant import _decoder  # noqa: E402
from triton_dequant import reference as ref  # noqa: E402
from triton_dequant.testing import compile_for, dequant_asm_blocks, int_to_float_conversions  # noqa: E402


@triton.jit
def rowwise_dequant(w_ptr, s_ptr, h_ptr, y_ptr, n_words, BLOCK: tl.constexpr, NBIT: tl.constexpr):
    """y[r, :] = s[r] * q(w[r, :]) + h[r]; w packs 32 // NBIT codes per int32 word."""
    PER: tl.constexpr = 32 // NBIT
    row = tl.program_id(0)
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    w = tl.load(w_ptr + row * n_words + col, mask=col < n_words)
    y = tl.dequantize(w, tl.load(s_ptr + row), tl.load(h_ptr + row), NBIT)
    out = tl.program_id(1) * BLOCK * PER + tl.arange(0, BLOCK * PER)
    tl.store(y_ptr + row * n_words * PER + out, y, mask=out < n_words * PER)


def _quantize_rows(x: torch.Tensor, nbit: int):
    """Affine per-row quantization, packed 32 // nbit codes per int32 (code j at bits j*nbit)."""
    lo, hi = x.min(1, keepdim=True).values, x.max(1, keepdim=True).values
    scale = ((hi - lo) / (2 ** nbit - 1)).clamp_min(1e-8).half()
    shift = lo.half()
    q = ((x - shift.float()) / scale.float()).round().clamp(0, 2 ** nbit - 1).to(torch.int64)
    per = 32 // nbit
    q = q.reshape(x.shape[0], -1, per) << (torch.arange(per) * nbit)
    words = q.sum(-1)
    words = torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)
    return words, scale.flatten(), shift.flatten()


# the CPU model: Llama's structure at a size that decodes in milliseconds per token
SMALL = _decoder.Config(vocab=4096, hidden=512, intermediate=1536, layers=2, heads=8, kv_heads=4)
GPU_MODEL = dataclasses.replace(_decoder.LLAMA3_8B, layers=4)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _tokens_per_s(model, batch: int, steps: int, cache_len: int = 512) -> float:
    """Decode throughput of one CUDA-graph replay per token (batch sequences at a time)."""
    cache = model.new_cache(batch, cache_len)
    cache.pos.fill_(cache_len - steps - 8)
    step = model.graphed_step(cache, batch)
    tok = torch.zeros(batch, dtype=torch.long, device=cache.pos.device)
    for _ in range(4):
        step(tok)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(tok)
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def model_demo(config: _decoder.Config = None, nbit: int = 4, group_size: int = 128, prompt_len: int = 8,
               new_tokens: int = 16, timing: bool = HAS_GPU) -> bool:
    """Section 3 of the demo; returns True if the quantized model matches its dequantized
    twin: the same greedy tokens and logits within 1e-4 on the CPU (fp32, where both
    multiply by the same weights exactly); logits within 1e-2 on a GPU (fp16, where
    the kernels' accumulation order differs from cuBLAS', so greedy tokens may part
    at near ties)."""
    dev = "cuda" if HAS_GPU else "cpu"
    dtype = torch.float16 if HAS_GPU else torch.float32  # fp32 activations are the CPU path
    config = config or (GPU_MODEL if HAS_GPU else SMALL)
    with torch.device(dev):
        fp = _decoder.Decoder(config).to(dtype).init_random(0).eval()
    t0 = time.perf_counter()
    q = quantize_model(copy.deepcopy(fp), nbit, group_size)
    # the twin: the original model with every Linear weight replaced by what the quantized layer multiplies by
    twin = fp
    for name, m in q.named_modules():
        if isinstance(m, QuantizedLinear):
            twin.get_submodule(name).weight.data = m.dequantized_weight(dtype)
    n_layers = sum(isinstance(m, QuantizedLinear) for m in q.modules())
    w16 = sum(m.weight.numel() * 2 for m in twin.modules() if isinstance(m, torch.nn.Linear))
    wq = _decoder.weight_bytes(q)
    print(f"\n3. a Llama-shaped model (random weights; hidden {config.hidden}, {config.layers} layers, "
          f"vocab {config.vocab}), {dtype} activations on the {dev.upper()}:")
    print(f"   quantize_model(model, nbit={nbit}, group_size={group_size}): {n_layers} nn.Linear -> QuantizedLinear "
          f"in {time.perf_counter() - t0:.1f} s")
    print(f"   linear weights: {_mb(w16)} in fp16 -> {_mb(wq)} int{nbit} (codes + fp16 scale/shift), "
          f"{w16 / wq:.2f}x smaller, {_mb(w16 - wq)} saved")
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, config.vocab, (1, prompt_len), generator=gen).to(dev)
    t0 = time.perf_counter()
    out_q = q.generate(prompt, new_tokens, graph=HAS_GPU)
    t_q = time.perf_counter() - t0
    out_t = twin.generate(prompt, new_tokens, graph=HAS_GPU)
    print(f"   greedy int{nbit} tokens after a random {prompt_len}-token prompt ({t_q:.1f} s): "
          f"{out_q[0, prompt_len:].tolist()}")
    same = torch.equal(out_q, out_t)
    print(f"   the same as with the dequantized weights in nn.Linear: {same}")
    # the logits of one step (first prompt token, empty cache) of both models agree
    logits = [m.step(prompt[:, 0], m.new_cache(1, 1)).double() for m in (q, twin)]
    err = ((logits[0] - logits[1]).norm() / logits[1].norm()).item()
    print(f"   logits vs the dequantized twin: relative error {err:.1e}")
    ok = (same or HAS_GPU) and err <= (1e-4 if dtype == torch.float32 else 1e-2)
    if timing:
        for batch in (1, 16):
            tq, tf = _tokens_per_s(q, batch, 64), _tokens_per_s(twin, batch, 64)
            print(f"   decode, batch {batch}, 512-token KV cache, CUDA graphs: int{nbit} {tq:,.0f} tokens/s, "
                  f"fp16 {tf:,.0f} tokens/s ({tq / tf:.2f}x)")
    return ok


def main(rows: int = 64, cols: int = 4096, nbit: int = 4) -> int:
    print(f"triton {triton.__version__}, torch {torch.__version__}, "
          f"device: {torch.cuda.get_device_name() if HAS_GPU else 'CPU only (Triton interpreter)'}")
    block = 256
    k = compile_for(rowwise_dequant, {"w_ptr": "*i32", "s_ptr": "*fp16", "h_ptr": "*fp16", "y_ptr": "*fp16",
                                      "n_words": "i32"}, {"BLOCK": block, "NBIT": nbit})
    ptx = k.asm["ptx"]
    blocks = dequant_asm_blocks(ptx)
    print(f"\n1. compiled for sm_90 on this machine: {len(ptx.splitlines())} lines of PTX, "
          f"{len(blocks)} tl.dequantize asm blocks, integer-to-float cvt: {len(int_to_float_conversions(ptx))}")
    print("   one block (8 int4 codes of one int32 word -> 8 fp16, 2 instructions per output):")
    print("   " + blocks[0].replace("\n", "\n   "))

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, cols, generator=gen)
    w, s, h = _quantize_rows(x, nbit)
    want = ref.dequantize(w, s[:, None], h[:, None], nbit, torch.float16)
    dev = "cuda" if HAS_GPU else "cpu"
    wd, sd, hd = w.to(dev), s.to(dev), h.to(dev)
    y = torch.full((rows, cols), float("nan"), dtype=torch.float16, device=dev)
    grid = (rows, triton.cdiv(w.shape[1], block))
    t0 = time.perf_counter()
    rowwise_dequant[grid](wd, sd, hd, y, w.shape[1], BLOCK=block, NBIT=nbit)
    if HAS_GPU:
        torch.cuda.synchronize()
    where = "on the GPU" if HAS_GPU else "in the interpreter"
    print(f"\n2. ran {where} ({time.perf_counter() - t0:.2f} s): [{rows}, {cols}] fp16 from int{nbit}")
    exact = torch.equal(y.cpu().view(torch.int16), want.view(torch.int16))
    err = (y.cpu().float() - x).abs().max().item()
    print(f"   bit-exact vs reference (scale*q + shift rounded once): {exact}")
    print(f"   max |dequant - original| = {err:.4f} (quantization error, step/2 <= {(s.float().max() / 2).item():.4f})")
    if HAS_GPU:
        from triton.testing import do_bench
        big_rows, big_cols = 16384, 16384
        wb = torch.randint(-2**31, 2**31 - 1, (big_rows, big_cols * nbit // 32), dtype=torch.int32, device=dev)
        sb = torch.rand(big_rows, device=dev).half()
        hb = torch.rand(big_rows, device=dev).half()
        yb = torch.empty(big_rows, big_cols, dtype=torch.float16, device=dev)
        gb = (big_rows, triton.cdiv(wb.shape[1], block))
        ms = do_bench(lambda: rowwise_dequant[gb](wb, sb, hb, yb, wb.shape[1], BLOCK=block, NBIT=nbit),
                      return_mode="median")
        nbytes = wb.numel() * 4 + yb.numel() * 2
        buf = torch.empty(nbytes // 2, dtype=torch.uint8, device=dev)
        ms_copy = do_bench(lambda: buf.clone(), return_mode="median")
        print(f"   [{big_rows}, {big_cols}] int{nbit} -> fp16: {nbytes / ms / 1e6:.0f} GB/s, "
              f"{100 * ms_copy / ms:.0f}% of a device copy moving the same bytes")
        del wb, yb, buf
    else:
        # the CPU model's tensors are small: one intra-op thread (on 2 cores shared with
        # other jobs, load average ~6: the demo took 24 s instead of 94 s with torch's
        # default of two spinning OpenMP threads)
        torch.set_num_threads(1)
    ok = model_demo()
    return 0 if exact and ok else 1


if __name__ == "__main__":
    sys.exit(main())
