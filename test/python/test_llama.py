"""A real client: transformers' LlamaForCausalLM (small random config, nothing
downloaded) through quantize_model (the plain layout and a prepacked tensor-core
one), against the same model whose nn.Linear weights are the quantized layers'
dequantized_weight(): same logits and greedy tokens; the quantized state dict loads
into a model prepared on the meta device (safetensors)."""
import copy
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from triton_dequant import QuantizedLinear, quantize_model

from conftest import DEVICE, HAS_GPU

# fp32 activations on the CPU (CI); fp16 on a GPU, where the kernels' fp32 accumulation
# order differs from cuBLAS' and every layer's fp16 output rounds differently
DTYPE = torch.float16 if HAS_GPU else torch.float32
TOL = 5e-3 if HAS_GPU else 1e-4
GROUP = 128
NEW_TOKENS = 8


def _config():
    # every Linear's in_features (128, 256) is a multiple of the group size
    return LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return LlamaForCausalLM(_config()).eval()


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(3, 512, (2, 6), generator=torch.Generator().manual_seed(1)).to(DEVICE)


def _quantized(base, nbit, layout="plain"):
    q = copy.deepcopy(base)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layer skipped
        quantize_model(q, nbit, GROUP, layout=layout)
    return q.to(device=DEVICE, dtype=DTYPE)


def _dequantized_twin(base, q):
    """``base`` with each quantized layer's nn.Linear weight set to what that layer multiplies by."""
    twin = copy.deepcopy(base)
    names = [n for n, m in q.named_modules() if isinstance(m, QuantizedLinear)]
    for n in names:
        twin.get_submodule(n).weight.data = q.get_submodule(n).dequantized_weight(DTYPE).cpu()
    return twin.to(device=DEVICE, dtype=DTYPE), names


def _generate(model, prompt):
    return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                          do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("nbit,layout", [(4, "plain"), (8, "plain"), (2, "plain"), (4, "mma_sm90")],
                         ids=["int4", "int8", "int2", "int4-mma_sm90"])
@torch.no_grad()
def test_llama_logits_and_greedy_tokens(base, prompt, nbit, layout):
    q = _quantized(base, nbit, layout)
    twin, names = _dequantized_twin(base, q)
    assert len(names) == 7 * 2 + 1  # q, k, v, o, gate, up, down per layer, and lm_head
    assert all(q.get_submodule(n).nbit == nbit for n in names)
    assert {q.get_submodule(n).layout for n in names} == {"plain" if layout == "plain" else "mma_sm90_4b_n128k64w4"}
    got, want = q(prompt).logits, twin(prompt).logits
    assert got.dtype == DTYPE and got.shape == (2, 6, 512)
    err = ((got.double() - want.double()).norm() / want.double().norm()).item()
    assert err <= TOL, err
    tokens = _generate(q, prompt)
    ref_tokens = _generate(twin, prompt)
    assert tokens.shape == (2, 6 + NEW_TOKENS)
    if not HAS_GPU:
        assert torch.equal(tokens, ref_tokens)
    else:  # teacher-forced: the same argmax wherever the reference is not a near tie
        lq, lr = q(ref_tokens).logits[:, 5:-1].float(), twin(ref_tokens).logits[:, 5:-1].float()
        top2 = lr.topk(2, -1).values
        clear = (top2[..., 0] - top2[..., 1]) > 4 * TOL * lr.abs().amax(-1)
        assert torch.equal(lq.argmax(-1)[clear], lr.argmax(-1)[clear]) and clear.float().mean() > 0.5


@pytest.mark.parametrize("layout", ["plain", "mma_sm80"])
@torch.no_grad()
def test_llama_state_dict_safetensors_meta(base, prompt, tmp_path, layout):
    q = _quantized(base, 4, layout)
    sd = q.state_dict()
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    with torch.device("meta"):
        m2 = LlamaForCausalLM(_config())
    quantize_model(m2, 4, GROUP, layout=layout)
    m2.load_state_dict(load_file(str(path), device=str(DEVICE)), assign=True)
    # the rotary frequencies are a non-persistent buffer (in no state dict): rebuilt as
    # transformers' from_pretrained does
    m2.model.rotary_emb = LlamaRotaryEmbedding(_config()).to(DEVICE)
    m2.eval()
    back = m2.state_dict()
    assert back.keys() == sd.keys()
    for k in sd:
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]), k
    assert torch.equal(m2(prompt).logits, q(prompt).logits)


# --- the demo's and the decode bench's Llama-shaped decoder ---------------------------------------

def _tiny_decoder():
    from triton_dequant import _decoder
    c = _decoder.Config(vocab=512, hidden=128, intermediate=256, layers=2, heads=4, kv_heads=2, rope_theta=10000.0)
    return c, _decoder.Decoder(c).init_random(0).eval()


@torch.no_grad()
def test_decoder_is_llama(prompt):
    """triton_dequant._decoder (static KV cache, one token per step) computes transformers' Llama."""
    c, dec = _tiny_decoder()
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=c.vocab, hidden_size=c.hidden, intermediate_size=c.intermediate,
                                      num_hidden_layers=c.layers, num_attention_heads=c.heads,
                                      num_key_value_heads=c.kv_heads, rope_theta=c.rope_theta, rms_norm_eps=c.eps,
                                      tie_word_embeddings=False)).eval()
    sd = {"model.embed_tokens.weight": dec.embed.weight, "model.norm.weight": dec.norm.weight,
          "lm_head.weight": dec.lm_head.weight}
    for i, layer in enumerate(dec.layers):
        p = f"model.layers.{i}."
        sd.update({p + "input_layernorm.weight": layer.attn_norm.weight,
                   p + "post_attention_layernorm.weight": layer.mlp_norm.weight})
        sd.update({p + f"self_attn.{a}_proj.weight": getattr(layer, f"{a}_proj").weight for a in "qkvo"})
        sd.update({p + f"mlp.{a}_proj.weight": getattr(layer, f"{a}_proj").weight for a in ("gate", "up", "down")})
    hf.load_state_dict(sd)
    prompt = prompt.cpu()
    tokens = dec.generate(prompt, 6)
    assert torch.equal(tokens, _generate(hf, prompt)[:, :tokens.shape[1]])
    full = hf(tokens).logits
    cache = dec.new_cache(prompt.shape[0], tokens.shape[1])
    for i in range(tokens.shape[1]):
        got = dec.step(tokens[:, i], cache)
        assert ((got - full[:, i]).norm() / full[:, i].norm()).item() <= 1e-5, i
    assert int(cache.pos) == tokens.shape[1]


def test_demo_model_section():
    from triton_dequant import demo
    c, _ = _tiny_decoder()
    assert demo.model_demo(c, nbit=4, group_size=128, prompt_len=3, new_tokens=3, timing=False)


def test_decode_bench_smoke():
    """bench/decode.py's dry run (its correctness check included), as bench/run.py --dry-run runs it."""
    import os
    import sys
    import time
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
    import decode

    def time_us(fn, graph=False):
        t = time.perf_counter()
        fn()
        return 1e6 * (time.perf_counter() - t)
    recs = []
    c, _ = _tiny_decoder()
    decode.run(time_us, lambda **r: recs.append(r), device=DEVICE, **{**decode.DRY_RUN, "config": c, "batches": (2,)})
    DRY_LAYOUT = decode.DRY_RUN.get("layout", "plain")  # noqa: N806
    assert {(r["impl"], r["shape"]) for r in recs} == {(impl, "model=tiny,kv=16,batch=2")
                                                       for impl in ("fp16", "ours", "ours-prepacked")}
    assert all(r["bench"] == "decode" and r["us"] > 0 and r["rel_err"] <= 1e-2 for r in recs)
    lays = {r["impl"]: r["layout"] for r in recs}
    assert lays == {"fp16": "fp16", "ours": DRY_LAYOUT, "ours-prepacked": "mma_sm90_4b_n128k64w4"}
