"""verify.py: one pass over a draft tree after a row's cache, the accepted path kept over many
steps (in float64: the logits of plain decoding), and the load-time check for 4D-mask support,
alone and batched."""

import numpy as np
import pytest
import torch
import transformers as tf
from genhelpers import (
    VOCAB,
    cached_row,
    fixed_engine,
    greedy,
    path_to,
    reference_cache,
    sequential_logits,
    tiny_model,
    tree,
    tree_logits,
)

from generation import UnsupportedModelError, verify
from generation.accept import greedy_accept
from generation.attention import use_sdpa_gqa
from generation.kv_cache import BatchKVCache
from generation.models import speed_up
from generation.step_cost import tree_draft
from generation.verify import Block, check_tree_attention, forward_blocks, prefill_row
from trie_store.draft import Draft


def assert_cache_equals(cache, model, ids: np.ndarray) -> None:
    """Row 0's real entries are those transformers computes for `ids` in one plain pass."""
    assert cache.lengths[0] == len(ids)
    expected = reference_cache(model, ids)
    for got, want in zip(cache.layers, expected.layers, strict=True):
        for mine, theirs in ((got.keys, want.keys), (got.values, want.values)):
            torch.testing.assert_close(mine[0, :, : len(ids)], theirs[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_rejected_branch_leaves_the_cache_of_the_accepted_path(arch):
    model = tiny_model(arch)
    prompt = np.random.default_rng(0).integers(0, VOCAB, 9)
    truth = greedy(model, prompt, 4)
    cache = cached_row(model, prompt[:-1])
    # Decoys first, so the accepted nodes 0, 2, 5 are not a prefix of the flattened order.
    wrong = (truth + 1) % VOCAB
    draft = tree(
        [prompt[-1], wrong[0], truth[0], wrong[1], wrong[1], truth[1], truth[2]],
        [-1, 0, 0, 1, 2, 2, 5],
    )
    logits = tree_logits(model, cache, draft)
    nodes, tokens = greedy_accept(draft, logits.argmax(-1).numpy())
    assert nodes.tolist() == [0, 2, 5, 6]
    assert tokens.tolist() == truth[:4].tolist()
    cache.keep([0], [nodes])
    assert_cache_equals(cache, model, np.concatenate([prompt, truth[:3]]))


def test_many_steps_stay_exact_and_the_cache_grows_past_its_capacity():
    model = tiny_model("llama", 7, dtype=torch.float64)
    speed_up(model)
    rng = np.random.default_rng(7)
    seq = list(rng.integers(0, VOCAB, 240))  # everything but the last token is cached
    cache = cached_row(model, np.array(seq[:-1]), chunk=64)
    gathered = 0
    for _ in range(40):
        draft = tree_draft(int(rng.integers(1, 12)), rng, VOCAB)
        draft = Draft(
            np.array([seq[-1], *draft.tokens[1:]]), draft.parent, draft.depth, draft.scores
        )
        logits = tree_logits(model, cache, draft)
        torch.testing.assert_close(
            logits, sequential_logits(model, np.array(seq[:-1]), draft), rtol=0, atol=1e-12
        )
        kept = path_to(draft, int(rng.integers(0, len(draft))))
        gathered += int(kept[-1] != len(kept) - 1)
        cache.keep([0], [kept])
        seq += [int(t) for t in draft.tokens[kept[1:]]] + [int(rng.integers(0, VOCAB))]
        assert cache.lengths[0] == len(seq) - 1
    assert gathered >= 8  # the non-contiguous (gather) path was exercised
    assert len(seq) > 256  # past the first allocation: the buffers grew and kept their entries
    assert_cache_equals(cache, model, np.array(seq[:-1]))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gpt2"])
def test_supported_architectures_pass_the_probe(arch):
    check_tree_attention(tiny_model(arch))


def test_model_that_rejects_4d_masks_is_refused():
    config = tf.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float64).eval()
    with pytest.raises(UnsupportedModelError, match="4D attention mask"):
        check_tree_attention(model)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_model_that_ignores_the_mask_is_refused(monkeypatch, tokenizer, dtype):
    model = tiny_model("llama", dtype=dtype)
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda **kw: forward(**{**kw, "attention_mask": None}))
    with pytest.raises(UnsupportedModelError, match="ignores the custom 4D attention mask"):
        fixed_engine(model, tokenizer)


def test_model_that_mixes_up_rows_positions_is_refused():
    """In float64: a tiny random model hardly depends on positions (0.03 of its logits' spread
    here), below what bfloat16 rounding alone moves them (the probe's bfloat16 tolerance)."""
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


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("padded_attention", [False, True])
def test_ragged_pass_gives_each_row_its_own_plain_logits(arch, padded_attention, monkeypatch):
    # Attention per row (roots, then each tree) or in one padded call: both exact.
    monkeypatch.setattr(verify, "pad_attention", lambda sizes: padded_attention)
    model = tiny_model(arch, 3)
    assert use_sdpa_gqa(model)
    assert check_tree_attention(model)
    rng = np.random.default_rng(3)
    contexts = [rng.integers(0, VOCAB, n) for n in (5, 40, 17, 1)]
    cache = BatchKVCache(model, len(contexts))
    for row, context in enumerate(contexts[:3]):  # the last row starts empty
        prefill_row(model, cache, row, context[:-1], 8)
    for _ in range(3):  # sizes 1 and up, different each step; the accepted paths kept
        drafts = []
        for context in contexts:
            draft = tree_draft(int(rng.integers(1, 9)), rng, VOCAB)
            drafts.append(Draft(np.array([context[-1], *draft.tokens[1:]]), draft.parent,
                                draft.depth, draft.scores))  # fmt: skip
        blocks = [Block.of_draft(d) for d in drafts]
        logits = forward_blocks(model, cache, slice(0, 4), blocks, ragged=True)
        kept = []
        for row, (context, draft) in enumerate(zip(contexts, drafts, strict=True)):
            want = sequential_logits(model, context[:-1], draft)
            torch.testing.assert_close(logits[row], want, rtol=0, atol=1e-12)
            kept.append(path_to(draft, int(rng.integers(0, len(draft)))))
        cache.keep(range(4), kept)
        for row, nodes in enumerate(kept):
            follow = drafts[row].tokens[nodes[1:]]
            contexts[row] = np.concatenate([contexts[row], follow, rng.integers(0, VOCAB, 1)])
    for row, context in enumerate(contexts):
        assert cache.lengths[row] == len(context) - 1


def test_ragged_needs_the_engines_attention():
    assert not check_tree_attention(tiny_model("llama"))  # transformers' sdpa: padded
    model = tiny_model("mistral")
    assert use_sdpa_gqa(model)
    assert not check_tree_attention(model)  # a sliding window the ragged pass can't model
    model = tiny_model("llama")
    use_sdpa_gqa(model)
    forward = model.forward
    model.forward = lambda **kw: forward(**{k: v for k, v in kw.items() if k != "ragged_layout"})
    assert not check_tree_attention(model)  # a model that drops the layout: padded, not wrong


@pytest.mark.parametrize(
    ("sizes", "padded"),
    [
        ([3, 3, 3, 3, 1, 1, 1, 1], True),  # four trees, two extra nodes at most
        ([4, 3, 3, 2, 2, 2, 2, 1], True),
        ([2, 2, 1, 1], True),
        ([9, 1, 1, 1, 1, 1, 1, 1], False),  # one deep tree: seven roots would pad to nine
        ([6, 2, 1, 1], False),
    ],
)
def test_ragged_attention_is_padded_when_many_rows_have_trees(sizes, padded):
    assert verify.pad_attention(np.array(sizes)) is padded
