"""Attention for packed documents and bidirectional spans (mot_parallel/model/attention_mask.py):

- the mask built from (document ids, span ids) equals the rule written out here per token pair: same
  document, and key <= query or both in the same span; on random packings including extremes (one
  document, every token its own document, one span covering everything, spans of one token, lengths
  that are and are not multiples of the tile);
- the FlexAttention block structure is exact: every (query, key) pair the kernel would compute
  (full tiles, or partial tiles where the mask_mod says yes) is exactly the mask, and no tile that holds
  only masked pairs is listed;
- outputs AND gradients of FlexAttention (eager; on CPU its reference implementation) and of SDPA with
  the dense mask equal a direct per-document computation written here (GQA included): fp32, max abs
  error <= 2e-5 on O(1) values;
- bad ids fail with an error naming the column and id; the kernel choice and the planner's byte count.
FlexAttention's public entry refuses backward on CPU although its eager backward is device-generic torch
code; the gradient tests lift that check (the GPU test below runs the compiled kernel unpatched).
"""
import pytest
import torch
import torch.nn.attention.flex_attention as fa

from mot_parallel.distributed import device as dev
from mot_parallel.model.attention_core import attention_core
from mot_parallel.model.attention_mask import (AttentionMask, block_classes, build_attention_mask, choose_kernel,
                                               intervals, mask_bytes)

TOL = 2e-5


def random_layout(seed, s, b, max_docs=5, span_prob=0.5):
    """Document ids [s, b] (contiguous runs) and span ids [s, b] (-1 or runs inside a document)."""
    g = torch.Generator().manual_seed(seed)
    doc, span = torch.empty(s, b, dtype=torch.long), torch.full((s, b), -1, dtype=torch.long)
    for j in range(b):
        cuts = sorted(torch.randperm(s - 1, generator=g)[:int(torch.randint(0, max_docs, (1,), generator=g))] + 1)
        bounds = [0] + [int(c) for c in cuts] + [s]
        for d, (a, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            doc[a:e, j] = d
            pos, sid = a, 0
            while pos < e:  # alternate plain text and spans (images) of random lengths
                n = min(e - pos, int(torch.randint(1, max(2, (e - a) // 2 + 1), (1,), generator=g)))
                if torch.rand(1, generator=g) < span_prob:
                    span[pos:pos + n, j] = sid
                    sid += 1
                pos += n
    return doc, span


def rule_mask(doc, span):
    """[b, 1, s, s] from the definition, pair by pair (no intervals)."""
    d, sp = doc.t(), span.t() if span is not None else torch.full_like(doc.t(), -1)
    s = d.shape[1]
    same_doc = d.unsqueeze(2) == d.unsqueeze(1)
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    same_span = (sp.unsqueeze(2) == sp.unsqueeze(1)) & (sp.unsqueeze(2) >= 0)
    return (same_doc & (causal | same_span)).unsqueeze(1)


LAYOUTS = [(seed, s, b) for seed, (s, b) in enumerate([(1, 1), (7, 2), (16, 1), (33, 3), (64, 2), (100, 2),
                                                         (129, 1)] * 4)]


@pytest.mark.parametrize("seed,s,b", LAYOUTS)
def test_mask_and_block_structure_follow_the_rule(seed, s, b):
    doc, span = random_layout(seed, s, b, max_docs=[1, 5, s][seed % 3], span_prob=[0.0, 0.5, 1.0][seed % 3 - 1])
    if seed % 7 == 3:
        doc = torch.arange(s).unsqueeze(1).expand(s, b).clone()  # every token its own document
        span = torch.full_like(doc, -1)
    expected = rule_mask(doc, span)
    for block in (4, 16):
        m = build_attention_mask(doc, span, kernel="flex", block_size=block)
        assert torch.equal(m.dense(), expected)
        # the pairs the block-sparse kernel computes, from the BlockMask it receives
        bm = m.block_mask
        n = -(-s // block)
        computed = torch.zeros(b, s, s, dtype=torch.bool)
        for j in range(b):
            for qb in range(n):
                for kind, num, idx in (("partial", bm.kv_num_blocks, bm.kv_indices),
                                       ("full", bm.full_kv_num_blocks, bm.full_kv_indices)):
                    for kb in idx[j, 0, qb, :int(num[j, 0, qb])].tolist():
                        rows, cols = slice(qb * block, (qb + 1) * block), slice(kb * block, (kb + 1) * block)
                        tile = expected[j, 0, rows, cols]
                        if kind == "full":
                            assert tile.all(), (j, qb, kb)
                        else:
                            assert tile.any() and not computed[j, rows, cols].any(), (j, qb, kb)
                        computed[j, rows, cols] = tile
        assert torch.equal(computed, expected[:, 0])
        partial, full = block_classes(*intervals(doc.t(), span.t()), block)
        assert not (partial & full).any()
        for j, qb, kb in (partial & ~full).nonzero().tolist():  # partial tiles are not secretly full
            q0, k0 = qb * block, kb * block
            if q0 + block <= s and k0 + block <= s:
                assert not expected[j, 0, q0:q0 + block, k0:k0 + block].all()


def reference_attention(q, k, v, doc, span):
    """Per document: its own queries and keys only, causal or same-span, plain softmax; GQA by repetition."""
    s, b, hq, d = q.shape
    rep = hq // k.shape[2]
    out = torch.zeros_like(q)
    for j in range(b):
        ids = doc[:, j]
        starts = [0] + [i for i in range(1, s) if ids[i] != ids[i - 1]] + [s]
        for a, e in zip(starts[:-1], starts[1:]):
            qd, kd, vd = q[a:e, j], k[a:e, j].repeat_interleave(rep, 1), v[a:e, j].repeat_interleave(rep, 1)
            sp = span[a:e, j]
            n = e - a
            allowed = torch.ones(n, n, dtype=torch.bool).tril() | ((sp[:, None] == sp[None, :]) & (sp[:, None] >= 0))
            scores = torch.einsum("qhd,khd->hqk", qd, kd) / d ** 0.5
            p = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
            out[a:e, j] = torch.einsum("hqk,khd->qhd", p, vd)
    return out


@pytest.mark.parametrize("seed,s,b,heads", [(0, 40, 2, (4, 2)), (1, 72, 1, (4, 4)), (2, 33, 3, (6, 2)),
                                            (3, 64, 2, (8, 1))])
def test_flex_and_sdpa_match_per_document_reference(seed, s, b, heads, monkeypatch):
    monkeypatch.setattr(fa, "_validate_device", lambda *args: None)  # CPU backward: see module docstring
    doc, span = random_layout(seed, s, b)
    g = torch.Generator().manual_seed(seed)
    hq, hkv = heads
    qkv = [torch.randn(s, b, h, 8, generator=g).requires_grad_() for h in (hq, hkv, hkv)]
    grad_out = torch.randn(s, b, hq, 8, generator=g)
    ref = reference_attention(*qkv, doc, span)
    ref_grads = torch.autograd.grad(ref, qkv, grad_out)
    for kernel in ("flex", "sdpa"):
        mask = build_attention_mask(doc, span, kernel=kernel, block_size=16)
        out = attention_core(*qkv, mask=mask)
        grads = torch.autograd.grad(out, qkv, grad_out)
        assert (out - ref).abs().max() < TOL, kernel
        for name, gr, gref in zip("qkv", grads, ref_grads):
            assert (gr - gref).abs().max() < TOL, (kernel, name)


def test_plain_causal_and_legacy_dense_tensor_agree_with_the_mask_object():
    s, b = 24, 2
    doc = torch.zeros(s, b, dtype=torch.long)  # one document: the mask is plain causal
    q, k, v = (torch.randn(s, b, 4, 8) for _ in range(3))
    mask = build_attention_mask(doc, kernel="sdpa")
    causal = attention_core(q, k, v)
    assert (attention_core(q, k, v, mask=mask) - causal).abs().max() < TOL
    assert (attention_core(q, k, v, mask=mask.dense()) - causal).abs().max() < TOL


def test_dropout_with_a_flex_mask_runs_sdpa_on_the_dense_form():
    doc, span = random_layout(5, 32, 2)
    q, k, v = (torch.randn(32, 2, 4, 8) for _ in range(3))
    flex, sdpa = (build_attention_mask(doc, span, kernel=kn, block_size=16) for kn in ("flex", "sdpa"))
    torch.manual_seed(0)
    a = attention_core(q, k, v, mask=flex, dropout_p=0.5)
    torch.manual_seed(0)
    b = attention_core(q, k, v, mask=sdpa, dropout_p=0.5)
    assert torch.equal(a, b)


@pytest.mark.parametrize("doc,span,message", [
    ([0, 0, 1, 1, 0, 0], None, "column 0: document id 0 appears in separate runs"),
    ([0, 0, 0, 1, 1, 1], [2, -1, 2, -1, -1, -1], "span id 2 of document 0 appears in separate runs"),
    ([0, 0, 0, 0], [-2, -1, -1, -1], "span ids must be >= 0, or -1"),
])
def test_bad_ids_are_refused_by_name(doc, span, message):
    doc = torch.tensor(doc).unsqueeze(1)
    span = None if span is None else torch.tensor(span).unsqueeze(1)
    with pytest.raises(ValueError, match=message):
        build_attention_mask(doc, span)


def test_a_span_may_repeat_its_id_in_another_document():
    doc, span = torch.tensor([[0, 0, 1, 1]]).t(), torch.tensor([[0, 0, 0, 0]]).t()
    assert torch.equal(build_attention_mask(doc, span).dense(), rule_mask(doc, span))


def test_float_ids_and_shape_mismatch_are_refused():
    with pytest.raises(ValueError, match="integer"):
        build_attention_mask(torch.zeros(4, 1))
    with pytest.raises(ValueError, match="shaped like the document ids"):
        build_attention_mask(torch.zeros(4, 1, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long))


def test_kernel_choice_and_mask_bytes():
    cpu = torch.device("cpu")
    assert choose_kernel(cpu) == "sdpa" and choose_kernel(cpu, masked=False) == "sdpa_causal"
    doc, span = random_layout(3, 300, 2)
    m = build_attention_mask(doc, span)
    assert isinstance(m, AttentionMask) and m.kernel == "sdpa" and m.block_mask is None
    assert mask_bytes(2, 300, "sdpa") == m.lo.nbytes + m.hi.nbytes + m.dense().nbytes
    f = build_attention_mask(doc, span, kernel="flex")
    bm = f.block_mask
    block_tensors = [bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices,
                     bm.q_num_blocks, bm.q_indices, bm.full_q_num_blocks, bm.full_q_indices]
    actual = f.lo.nbytes + f.hi.nbytes + sum(t.nbytes for t in block_tensors)
    assert mask_bytes(2, 300, "flex") >= actual and mask_bytes(2, 300, "flex") < 2 * actual
    assert mask_bytes(1, 4096, "flex") < mask_bytes(1, 4096, "sdpa") / 100 and mask_bytes(1, 4096, "sdpa_causal") == 0


@pytest.mark.gpu
def test_compiled_flex_matches_sdpa_on_gpu_without_host_sync(kv_heads=8):
    """Compiled FlexAttention (block-sparse) vs SDPA with the dense mask, bf16, s = 2048, GQA: outputs and
    gradients within 2e-2 abs (bf16 rounding of O(1) values); building the mask and running fwd+bwd issues
    no device->host synchronisation."""
    device = dev.pick_device(0)
    s, b = 2048, 2
    doc, span = random_layout(0, s, b, max_docs=6)
    g = torch.Generator().manual_seed(0)
    qkv = [torch.randn(s, b, h, 128, generator=g).to(device, torch.bfloat16).requires_grad_()
           for h in (32, kv_heads, kv_heads)]
    grad_out = torch.randn(s, b, 32, 128, generator=g).to(device, torch.bfloat16)
    sdpa = build_attention_mask(doc, span, device=device, kernel="sdpa")
    ref = attention_core(*qkv, mask=sdpa)
    ref_grads = torch.autograd.grad(ref, qkv, grad_out)
    attention_core(*qkv, mask=build_attention_mask(doc, span, device=device)).sum().backward()  # compile
    dev.synchronize(device)
    with dev.sync_debug_mode("error"):
        flex = build_attention_mask(doc, span, device=device)
        out = attention_core(*qkv, mask=flex)
        grads = torch.autograd.grad(out, qkv, grad_out)
    assert flex.kernel == "flex"
    assert (out.float() - ref.float()).abs().max() < 2e-2
    for gr, gref in zip(grads, ref_grads):
        assert (gr.float() - gref.float()).abs().max() < 2e-2 * max(1.0, gref.float().abs().max().item())


def test_planner_counts_the_mask_its_kernel_uses():
    from mot_parallel.model import ModelSettings
    from mot_parallel.config import ParallelLayout
    from mot_parallel.planner import memory
    lay = ParallelLayout(micro_batch_size=2)
    for masking in (True, False):
        s = ModelSettings(hidden_size=256, num_layers=2, num_heads=4, num_kv_heads=4, ffn_hidden_size=512,
                          vocab_size=64, modalities=("text", "image"),
                          vocab_multiple=1, document_masking=masking)
        gpu, cpu = (memory(s, lay, 4096, 2, on_accelerator=acc).activations for acc in (True, False))
        if masking:
            assert cpu - gpu == mask_bytes(2, 4096, "sdpa") - mask_bytes(2, 4096, "flex") > 2 * 4096 ** 2 * 0.99
        else:
            assert cpu == gpu


@pytest.mark.slow
def test_compiled_flex_uses_the_block_structure_and_compiles_once():
    """torch.compile(flex_attention) on CPU (inductor's block-sparse kernel, forward; ~1 min to compile)
    equals SDPA with the dense mask for three different masks (documents, image spans, documents), and
    the new masks reuse the first compiled graph (the mask_mod is one code object over new tensors)."""
    import torch._dynamo.utils as dynamo_utils
    from torch.nn.attention.flex_attention import flex_attention
    compiled = torch.compile(flex_attention, dynamic=False)
    s = 512  # 128-token tiles: some full, some partial, some skipped
    q, k, v = (torch.randn(1, 4, s, 64, generator=torch.Generator().manual_seed(i)) for i in range(3))
    graphs = None
    for seed, span_prob in ((0, 0.0), (1, 1.0), (2, 0.0)):
        doc, span = random_layout(seed, s, 1, max_docs=4, span_prob=span_prob)
        partial, full = block_classes(*intervals(doc.t(), span.t()), 128)
        assert partial.any() and (seed == 1 or full.any()) and not (partial | full).all()
        mask = build_attention_mask(doc, span, kernel="flex")
        out = compiled(q, k, v, block_mask=mask.block_mask)
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense())
        assert (out - ref).abs().max() < TOL
        graphs = graphs or dynamo_utils.counters["stats"]["unique_graphs"]
    assert dynamo_utils.counters["stats"]["unique_graphs"] == graphs
