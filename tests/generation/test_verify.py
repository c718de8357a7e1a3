"""verify.py: the tree pass and its KV bookkeeping (in-place growth, accepted paths), and the
load-time check for 4D-mask support, batched too."""

import numpy as np
import pytest
import torch
import transformers as tf
from genhelpers import VOCAB, fixed_engine, greedy, path_to, sequential_logits, tiny_model, tree
from transformers import DynamicCache

from generation import UnsupportedModelError
from generation.accept import greedy_accept
from generation.models import speed_up
from generation.step_cost import tree_draft
from generation.verify import (
    GrowingLayer,
    check_tree_attention,
    keep_accepted_kv,
    prefill,
    verify_forward,
)
from trie_store.draft import Draft


def cache_of(model, ids: np.ndarray) -> DynamicCache:
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.from_numpy(ids).unsqueeze(0), cache=cache, use_cache=True)
    return cache


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_rejected_branch_leaves_the_cache_of_the_accepted_path(arch):
    model = tiny_model(arch)
    prompt = np.random.default_rng(0).integers(0, VOCAB, 9)
    truth = greedy(model, prompt, 4)
    cache = prefill(model, prompt[:-1])
    # Decoys first, so the accepted nodes 0, 2, 5 are not a prefix of the flattened order.
    wrong = (truth + 1) % VOCAB
    draft = tree(
        [prompt[-1], wrong[0], truth[0], wrong[1], wrong[1], truth[1], truth[2]],
        [-1, 0, 0, 1, 2, 2, 5],
    )
    logits = verify_forward(model, cache, draft, past_len=len(prompt) - 1)
    nodes, tokens = greedy_accept(draft, logits.argmax(-1).numpy())
    assert nodes.tolist() == [0, 2, 5, 6]
    assert tokens.tolist() == truth[:4].tolist()
    keep_accepted_kv(cache, len(prompt) - 1, nodes)
    expected = cache_of(model, np.concatenate([prompt, truth[:3]]))
    assert cache.get_seq_length() == len(prompt) + 3
    for got, want in zip(cache.layers, expected.layers, strict=True):
        torch.testing.assert_close(got.keys, want.keys, rtol=0, atol=1e-12)
        torch.testing.assert_close(got.values, want.values, rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gpt2"])
def test_supported_architectures_pass_the_probe(arch):
    check_tree_attention(tiny_model(arch))


def test_model_that_rejects_4d_masks_is_refused():
    config = tf.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float64).eval()
    with pytest.raises(UnsupportedModelError, match="4D attention mask"):
        check_tree_attention(model)


def test_model_that_ignores_the_mask_is_refused(monkeypatch, tokenizer):
    model = tiny_model("llama")
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda **kw: forward(**{**kw, "attention_mask": None}))
    with pytest.raises(UnsupportedModelError, match="ignores the custom 4D attention mask"):
        fixed_engine(model, tokenizer)


def test_model_that_mixes_up_rows_positions_is_refused():
    model = tiny_model("llama")
    check_tree_attention(model)  # as it is, fine
    forward = model.forward

    def first_row_positions(**kw):
        positions = kw.get("position_ids")
        if positions is not None and positions.shape[0] > 1:
            kw["position_ids"] = positions[:1].expand_as(positions).contiguous()
        return forward(**kw)

    model.forward = first_row_positions
    with pytest.raises(UnsupportedModelError, match="batched in rows of different lengths"):
        check_tree_attention(model)
    assert torch.get_num_threads() >= 1


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
