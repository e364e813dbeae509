"""Decode time per token of a Llama-shaped model: fp16 ``nn.Linear`` against
``QuantizedLinear`` int4 groups of 128.

Model (``triton_dequant._decoder``, random weights, fp16): Llama-3-8B widths
(hidden 4096, intermediate 14336, 32 heads, 8 KV heads, vocab 128256) with
``layers`` decoder layers (4), embedding and lm_head included. One decode step
per sequence at the last position of a ``cache_len``-position KV cache (512:
attention reads all of it), batch 1 and 16.

Implementations:
* ours: ``quantize_model(model, 4, 128)`` on the device, so with the layout
  ``layout="auto"`` picks there (``triton_dequant.model.auto_layout``: plain, the
  GEMV at batch 1, as this bench measured on the H200): every
  ``nn.Linear`` (the 7 per layer and lm_head, as torchao's ``quantize_`` does by
  default);
* ours-prepacked: the same codes in the prepacked tensor-core layout of the device
  (``to_layout("mma_sm90")`` / ``"mma_sm80"``), so that one run compares the two
  layouts end to end (the auto rule follows this comparison at batch 1);
* fp16: the same model with every ``nn.Linear`` weight set to the quantized
  layer's ``dequantized_weight()`` (the shapes and cost of the original fp16
  model; the reference ours is checked against).

Every step starts from the same random KV cache; ours' and ours-prepacked's logits are
checked against fp16's (relative error <= 1e-2, norm) before anything is timed. Timed as CUDA-graph
replays of one step (``time_us(fn, graph=True)``: device time, no Python), L2
flushed, interleaved twice (``common.time_all``).

Records: bench ``"decode"``, nbit 4, shape ``"model=llama3-8b-4L,kv=512,batch=B"``,
impl ``"fp16"`` / ``"ours"`` / ``"ours-prepacked"``, ``us`` per step (= per generated
token of every sequence), extra ``tokens_per_s`` (batch / step time),
``weight_bytes`` (the linear layers' weights as stored), ``rel_err`` (logits vs
fp16) and ``layout`` (the quantized layers' layout; "fp16" for fp16).
"""
from __future__ import annotations

import copy
import dataclasses

import torch

from triton_dequant import QuantizedLinear, quantize_model
from triton_dequant import _decoder

from common import time_all

NBIT, GROUP = 4, 128
TOL = 1e-2
# estimate of this module's GPU run (s): building, quantizing, prepacking 4 Llama-3-8B layers + embedding
# + lm_head (~2 G parameters) and the two copies ~10 s; Triton compiles: per batch, the prepacked kernel
# at 5 (K, N) shapes (qkv-like, o, gate/up, down, lm_head: split-K differs) and the plain GEMV / mm at
# the same ~5, ~20 x ~1 s; 2 batches x 3 models x 2 rounds of graph replays ~3 s
ESTIMATE_S = 40
COMPILE_S = 18  # the package-kernel compiles in ESTIMATE_S (plan_kernels lists them for bench/precompile.py)


def _layouts(model) -> str:
    return ",".join(sorted({m.layout for m in model.modules() if isinstance(m, QuantizedLinear)}))


def _models(config, device, dtype, layout):
    """{impl: model}: fp16 (the dequantized twin), ours (``layout``), ours-prepacked (the same
    codes in the device's prepacked tensor-core layout)."""
    with torch.device(device):
        fp = _decoder.Decoder(config).to(dtype).init_random(0).eval()
    q = quantize_model(copy.deepcopy(fp), NBIT, GROUP, layout=layout)
    for name, m in q.named_modules():  # fp becomes the dequantized twin, in place
        if isinstance(m, QuantizedLinear):
            fp.get_submodule(name).weight.data = m.dequantized_weight(dtype)
    dev = torch.device(device)
    arch = "sm80" if dev.type == "cuda" and torch.cuda.get_device_capability(dev) < (9, 0) else "sm90"
    prepacked = copy.deepcopy(q)
    for m in prepacked.modules():
        if isinstance(m, QuantizedLinear):
            m.to_layout(f"mma_{arch}")
    return {"fp16": fp, "ours": q, "ours-prepacked": prepacked}


def plan_kernels(target, layers=4, batches=(1, 16), cache_len=512, config=None, name=None, layout="auto"):
    """The ``linear`` kernels of the quantized models' steps on ``target`` (bench/precompile.py):
    every projection's (K, N) at M = batch, prepacked (the layout "auto" picks on a GPU) and plain."""
    from triton_dequant import layouts
    from linear import meta_kernels
    c = config or dataclasses.replace(_decoder.LLAMA3_8B, layers=layers)
    kv = c.kv_heads * c.head_dim
    shapes = {(c.hidden, c.hidden), (c.hidden, kv), (c.hidden, c.intermediate), (c.intermediate, c.hidden),
              (c.hidden, c.vocab)}
    lay = layouts.default_layout(target.arch, NBIT)
    out = []
    for batch in batches:
        for K, N in sorted(shapes):
            out += meta_kernels(target, batch, K, N, NBIT, K // GROUP, GROUP)
            out += meta_kernels(target, batch, K, N, NBIT, K // GROUP, GROUP, layout=lay)
    return out


def run(time_us, record, device="cuda", layers=4, batches=(1, 16), cache_len=512, config=None, name=None,
        layout="auto"):
    """``layout``: ours' (``"auto"``: what QuantizedLinear picks on ``device``; the
    dry run passes a prepacked one so that the CPU covers that path too)."""
    config = config or dataclasses.replace(_decoder.LLAMA3_8B, layers=layers)
    name = name or f"llama3-8b-{config.layers}L"
    dtype = torch.float16 if device == "cuda" else torch.float32  # fp32 activations: the CPU path
    models = _models(config, device, dtype, layout)
    fp = models["fp16"]
    sizes = {impl: _decoder.weight_bytes(m) for impl, m in models.items()}
    sizes["fp16"] = sum(m.weight.numel() * 2 for m in fp.modules() if isinstance(m, torch.nn.Linear))
    lays = {impl: _layouts(m) or "fp16" for impl, m in models.items()}
    gen = torch.Generator(device=device).manual_seed(1)
    with torch.no_grad():
        for batch in batches:
            cache = fp.new_cache(batch, cache_len)
            cache.k.normal_(generator=gen)
            cache.v.normal_(generator=gen)
            caches = {impl: cache if impl == "fp16" else
                      dataclasses.replace(cache, k=cache.k.clone(), v=cache.v.clone(), pos=cache.pos.clone())
                      for impl in models}
            tokens = torch.randint(0, config.vocab, (batch,), device=device, generator=gen)

            def step(impl):
                m, c = models[impl], caches[impl]

                def fn():
                    c.pos.fill_(cache_len - 1)  # every replay decodes the last position
                    return m.step(tokens, c)
                return fn

            fns = {impl: step(impl) for impl in models}
            want = fns["fp16"]().double()
            errs = {"fp16": 0.0}
            for impl in models:
                if impl != "fp16":
                    got = fns[impl]().double()
                    errs[impl] = ((got - want).norm() / want.norm()).item()
                    if not errs[impl] <= TOL:
                        raise AssertionError(f"decode batch={batch}: {impl} ({lays[impl]}) vs fp16 logits relative "
                                             f"error {errs[impl]:.2e} > {TOL}")
            times = time_all(time_us, fns, graph=True)
            shape = f"model={name},kv={cache_len},batch={batch}"
            for impl, (us, runs) in times.items():
                record(bench="decode", nbit=NBIT, shape=shape, impl=impl, us=us, runs=runs,
                       tokens_per_s=batch * 1e6 / us, weight_bytes=sizes[impl], rel_err=errs[impl],
                       layout=lays[impl])
            del caches, cache


DRY_RUN = {"config": _decoder.Config(vocab=512, hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2),
           "name": "tiny", "batches": (1, 2), "cache_len": 16}
