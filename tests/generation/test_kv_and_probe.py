"""KV bookkeeping after accepted paths, and the load-time check for 4D-mask support."""

import numpy as np
import pytest
import torch
import transformers as tf
from genhelpers import VOCAB, OracleDrafter, fixed_engine, greedy, tiny_model, tree
from transformers import DynamicCache

import generation.decode
from generation import LookaheadConfig, UnsupportedModelError
from generation.accept import greedy_accept
from generation.decode import prefill
from generation.verify import check_tree_attention, keep_accepted_kv, verify_forward


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


def test_cache_tracks_prompt_plus_emitted_over_many_steps(monkeypatch, tokenizer):
    model = tiny_model("qwen2")
    prompt = np.random.default_rng(1).integers(0, VOCAB, 15)
    reference = greedy(model, prompt, 120)
    lengths = []

    def recording_keep(cache, past_len, kept):
        keep_accepted_kv(cache, past_len, kept)
        lengths.append((cache.get_seq_length(), past_len + len(kept)))

    monkeypatch.setattr(generation.decode, "keep_accepted_kv", recording_keep)
    engine = fixed_engine(model, tokenizer)
    drafter = OracleDrafter(np.concatenate([prompt, reference]), seed=2, hit_rate=0.5)
    chunks = list(engine.stream(prompt, LookaheadConfig(120, draft_size=8), drafter))
    assert [t for c in chunks for t in c.token_ids] == reference.tolist()
    assert len(lengths) == len(chunks) > 30
    assert all(got == want for got, want in lengths)
    emitted = np.cumsum([len(c.token_ids) for c in chunks])
    # The newest token is the next draft's root: it enters the cache in the next step.
    assert [got for got, _ in lengths] == (len(prompt) + emitted - 1).tolist()


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
