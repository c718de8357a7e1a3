"""The verify-pass speed-ups change how the arithmetic is scheduled, never what it computes."""

import copy

import numpy as np
import pytest
import torch
from genhelpers import VOCAB, tiny_model
from torch import nn

from generation.decode import prefill
from generation.gqa_attention import NAME as SDPA_GQA
from generation.models import load_model, speed_up
from generation.packed_linear import PackedLinear, pack_linear_layers
from generation.step_cost import tree_draft
from generation.verify import GrowingLayer, keep_accepted_kv, verify_forward
from trie_store.draft import Draft


@torch.inference_mode()
def sequential_logits(model, context: np.ndarray, draft: Draft) -> torch.Tensor:
    """Each node's logits from a plain forward over the context plus the node's own path."""
    rows = []
    for i in range(len(draft)):
        path = []
        while i >= 0:
            path.append(int(draft.tokens[i]))
            i = int(draft.parent[i])
        ids = np.concatenate([context, path[::-1]])
        rows.append(model(input_ids=torch.from_numpy(ids).unsqueeze(0)).logits[0, -1])
    return torch.stack(rows)


def path_to(draft: Draft, node: int) -> np.ndarray:
    path = [node]
    while draft.parent[path[-1]] >= 0:
        path.append(int(draft.parent[path[-1]]))
    return np.array(sorted(path), dtype=np.int64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_computes_what_linear_computes(dtype, bias):
    torch.manual_seed(1)
    linear = nn.Linear(40, 72, bias=bias).to(dtype)
    packed = PackedLinear(linear)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    for shape in [(1, 40), (16, 40), (1, 5, 40)]:
        x = torch.randn(shape, dtype=dtype)
        torch.testing.assert_close(packed(x), linear(x), **tol)


def test_pack_swaps_every_linear_and_keeps_the_logits():
    stock = tiny_model("llama", dtype=torch.float32)
    packed = copy.deepcopy(stock)
    assert pack_linear_layers(packed) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer; head
    assert not any(type(m) is nn.Linear for m in packed.modules())
    ids = torch.randint(0, VOCAB, (1, 30))
    with torch.inference_mode():
        torch.testing.assert_close(packed(ids).logits, stock(ids).logits, rtol=1e-5, atol=1e-5)


def test_pack_leaves_float64_models_alone():
    model = tiny_model("llama", dtype=torch.float64)
    assert pack_linear_layers(model) == 0
    assert speed_up(model) == [SDPA_GQA]


@pytest.mark.parametrize("seed", range(3))
def test_float64_tree_logits_equal_sequential_and_stock(seed):
    stock = tiny_model("llama", seed, dtype=torch.float64)
    fast = copy.deepcopy(stock)
    assert speed_up(fast) == [SDPA_GQA]
    rng = np.random.default_rng(seed)
    context = rng.integers(0, VOCAB, 20)
    draft = tree_draft(24, rng, VOCAB)
    tree = verify_forward(fast, prefill(fast, context), draft, len(context))
    reference = verify_forward(stock, prefill(stock, context), draft, len(context))
    torch.testing.assert_close(tree, reference, rtol=0, atol=1e-13)
    torch.testing.assert_close(tree, sequential_logits(stock, context, draft), rtol=0, atol=1e-12)


def test_float32_fast_tree_matches_stock_sequential():
    stock = tiny_model("llama", 5, dtype=torch.float32)
    fast = copy.deepcopy(stock)
    assert speed_up(fast) == ["packed_linear", SDPA_GQA]
    rng = np.random.default_rng(5)
    context = rng.integers(0, VOCAB, 40)
    draft = tree_draft(32, rng, VOCAB)
    tree = verify_forward(fast, prefill(fast, context), draft, len(context))
    torch.testing.assert_close(tree, sequential_logits(stock, context, draft), rtol=0, atol=1e-4)


def test_cache_grows_in_place_and_stays_exact_over_many_steps():
    model = tiny_model("llama", 7, dtype=torch.float64)
    speed_up(model)
    rng = np.random.default_rng(7)
    seq = list(rng.integers(0, VOCAB, 12))  # everything but the last token is cached
    cache = prefill(model, np.array(seq[:-1]))
    buffers = set()
    gathered = 0
    for _ in range(40):
        past_len = len(seq) - 1
        draft = tree_draft(int(rng.integers(1, 12)), rng, VOCAB)
        draft = Draft(
            np.array([seq[-1], *draft.tokens[1:]]), draft.parent, draft.depth, draft.scores
        )
        logits = verify_forward(model, cache, draft, past_len)
        torch.testing.assert_close(
            logits,
            sequential_logits(model, np.array(seq[:-1]), draft),
            rtol=0,
            atol=1e-12,
        )
        kept = path_to(draft, int(rng.integers(0, len(draft))))
        gathered += int(kept[-1] != len(kept) - 1)
        keep_accepted_kv(cache, past_len, kept)
        seq += [int(t) for t in draft.tokens[kept[1:]]] + [int(rng.integers(0, VOCAB))]
        assert cache.get_seq_length() == len(seq) - 1
        assert all(type(layer) is GrowingLayer for layer in cache.layers)
        buffers.add(cache.layers[0]._key_buffer.data_ptr())
    assert gathered >= 8  # the non-contiguous (gather) path was exercised
    assert len(buffers) <= 3  # appends land in place; a buffer is replaced only when full
    fresh = prefill(model, np.array(seq[:-1]))
    for mine, theirs in zip(cache.layers, fresh.layers, strict=True):
        torch.testing.assert_close(mine.keys, theirs.keys, rtol=0, atol=1e-12)
        torch.testing.assert_close(mine.values, theirs.values, rtol=0, atol=1e-12)


def test_growing_cache_still_works_after_transformers_resets_it():
    model = tiny_model("llama", 3, dtype=torch.float64)
    rng = np.random.default_rng(3)
    context = rng.integers(0, VOCAB, 10)
    cache = prefill(model, context)
    draft = tree_draft(6, rng, VOCAB)
    verify_forward(model, cache, draft, len(context))
    cache.reset()
    with torch.inference_mode():
        model(input_ids=torch.from_numpy(context).unsqueeze(0), cache=cache)
    tree = verify_forward(model, cache, draft, len(context))
    torch.testing.assert_close(tree, sequential_logits(model, context, draft), rtol=0, atol=1e-12)


PROMPTS = [
    "Passage: The Amazon River in South America is the largest river by discharge volume of "
    "water in the world. Question: Which river has the largest discharge?",
    "Summarise in one sentence: The committee met on Tuesday to discuss the budget. After a "
    "long debate, members agreed to raise funding for schools and to cut road maintenance.",
]


@pytest.mark.slow
def test_real_model_float32_greedy_identity():
    """The default model with the speed-ups: generate() gives stock transformers' tokens, and a
    16-node tree holding the greedy answer (among decoys) verifies to those same tokens."""
    fast, stock = load_model(), load_model(fast_kernels=False)
    assert fast.speedups == ("packed_linear", SDPA_GQA)
    for text in PROMPTS:
        ids = fast.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
        answers = [
            lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=32)[0, ids.shape[1]:].numpy()
            for lm in (fast, stock)
        ]  # fmt: skip
        np.testing.assert_array_equal(answers[0], answers[1])
        full = np.concatenate([ids[0].numpy(), answers[0]])
        cache = prefill(fast.model, full[: ids.shape[1] - 1])
        n = ids.shape[1] - 1  # cached tokens; full[n] is the root
        while n + 16 <= len(full):
            # the true branch (8 nodes) after a decoy branch, so the path is not contiguous
            decoys = (full[n + 1 : n + 8] + 1) % fast.model.config.vocab_size
            tokens = np.concatenate([[full[n]], decoys, full[n + 1 : n + 9]])
            parent = np.array([-1, *range(0, 7), 0, *range(8, 15)], dtype=np.int32)
            depth = np.array([0, *range(1, 8), *range(1, 9)], dtype=np.int32)
            draft = Draft(tokens.astype(np.int64), parent, depth, np.linspace(1, 0, 16))
            target = verify_forward(fast.model, cache, draft, n).argmax(-1).numpy()
            np.testing.assert_array_equal(target[[0, *range(8, 15)]], full[n + 1 : n + 9])
            keep_accepted_kv(cache, n, np.array([0, *range(8, 16)]))
            n += 9
