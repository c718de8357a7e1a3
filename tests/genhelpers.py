"""Small randomly initialised models, plain-greedy references and hand-built drafters for tests."""

from __future__ import annotations

import numpy as np
import torch
import transformers as tf

from trie_store.draft import Draft

VOCAB = 512  # the first ids of the default tokenizer, so tiny models' text can be decoded

_SHAPES = {
    "llama": (tf.LlamaConfig, {"num_key_value_heads": 2}),
    "qwen2": (tf.Qwen2Config, {"num_key_value_heads": 2}),
    "mistral": (tf.MistralConfig, {"num_key_value_heads": 2, "sliding_window": 4096}),
    "gpt2": (tf.GPT2Config, {"initializer_range": 0.2}),  # the default 0.02 just repeats
}
ARCHITECTURES = tuple(_SHAPES)


def tiny_model(
    arch: str,
    seed: int = 0,
    eos: int | None = None,
    vocab: int = VOCAB,
    dtype: torch.dtype = torch.float64,
) -> tf.PreTrainedModel:
    """A two-layer model of a real architecture (float64 unless asked otherwise), with a
    512-token window; `eos` None = never stops early."""
    config_class, extra = _SHAPES[arch]
    config = config_class(
        vocab_size=vocab,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=0,
        **extra,
    )
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    model.generation_config = tf.GenerationConfig(eos_token_id=eos, pad_token_id=0)
    return model


def greedy(model: tf.PreTrainedModel, prompt: np.ndarray, max_new_tokens: int, **kw) -> np.ndarray:
    """transformers' own greedy decoding: the reference every lookahead output must equal."""
    ids = torch.from_numpy(np.asarray(prompt, dtype=np.int64)).unsqueeze(0)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        **kw,
    )
    return out[0, ids.shape[1] :].numpy()


def chain(tokens, root: int) -> Draft:
    """A single-branch draft `root -> tokens[0] -> tokens[1] ...`."""
    n = len(tokens)
    return Draft(
        tokens=np.array([root, *tokens], dtype=np.int64),
        parent=np.arange(-1, n, dtype=np.int32),
        depth=np.arange(n + 1, dtype=np.int32),
        scores=np.array([1.0, *np.linspace(0.9, 0.1, n)]) if n else np.ones(1),
    )


def tree(tokens, parents) -> Draft:
    """A draft from explicit (token, parent) lists in flattened order, node 0 the root."""
    parent = np.array(parents, dtype=np.int32)
    depth = np.zeros(len(parent), dtype=np.int32)
    for i in range(1, len(parent)):
        depth[i] = depth[parent[i]] + 1
    scores = np.concatenate([[1.0], np.linspace(0.9, 0.1, len(parent) - 1)])
    return Draft(np.array(tokens, dtype=np.int64), parent, depth, scores)


class OracleDrafter:
    """Knows the greedy answer and hides it at random places in a random tree of decoys.

    The true branch is cut at a random depth and may come after whole decoy subtrees in the
    flattened order, so accepted paths are often non-contiguous (the gather path of the KV
    bookkeeping). Records what it is shown, to check `observe`.
    """

    def __init__(self, full: np.ndarray, seed: int, hit_rate: float = 0.7) -> None:
        self.full = np.asarray(full, dtype=np.int64)  # prompt + greedy answer
        self.rng = np.random.default_rng(seed)
        self.hit_rate = hit_rate
        self.observed: list[int] = []

    def draft(self, context: np.ndarray, max_nodes: int) -> Draft:
        n = len(context)
        assert np.array_equal(context, self.full[:n]), "context must be greedy's prefix"
        truth = self.full[n:]
        tokens, parents, on_path = [int(context[-1])], [-1], [0]  # on_path: depth on truth, or -1
        true_child = {}  # node -> its child carrying the true token
        for _ in range(max_nodes):
            parent = int(self.rng.integers(len(tokens)))
            d = on_path[parent]
            if d >= 0 and d < len(truth) and parent not in true_child:
                if self.rng.random() < self.hit_rate:
                    true_child[parent] = len(tokens)
                    tokens.append(int(truth[d]))
                    parents.append(parent)
                    on_path.append(d + 1)
                    continue
                token = int((truth[d] + 1 + self.rng.integers(VOCAB - 1)) % VOCAB)
            else:
                token = int(self.rng.integers(VOCAB))
            tokens.append(token)
            parents.append(parent)
            on_path.append(-1)
        return tree(tokens, parents)

    def observe(self, tokens: np.ndarray) -> None:
        self.observed.extend(int(t) for t in tokens)


class PromptLookupDrafter:
    """A realistic chain drafter: what followed the latest earlier match of the last 1-3 tokens."""

    def __init__(self) -> None:
        self.observed: list[int] = []

    def draft(self, context: np.ndarray, max_nodes: int) -> Draft:
        for k in (3, 2, 1):
            if len(context) <= k:
                continue
            tail = context[-k:]
            windows = np.lib.stride_tricks.sliding_window_view(context[:-1], k)
            hits = np.flatnonzero((windows == tail).all(axis=1))
            if hits.size:
                start = hits[-1] + k
                return chain(context[start : start + max_nodes], int(context[-1]))
        return Draft.root_only(int(context[-1]))

    def observe(self, tokens: np.ndarray) -> None:
        self.observed.extend(int(t) for t in tokens)


def fixed_engine(model: tf.PreTrainedModel, tokenizer, name: str = "tiny"):
    """A generator with a fixed draft size by default (no step-cost measurement)."""
    from generation import LoadedModel, LookaheadConfig, LookaheadGenerator

    return LookaheadGenerator(LoadedModel(model, tokenizer, name), LookaheadConfig(draft_size=4))


def cheap_costs():
    """A batch cost surface under which drafting pays (no measuring in tests): t(b, q) grows
    slowly with the rows b * q."""
    from generation.step_cost import BatchCosts, StepCostCurve

    return BatchCosts(
        {
            b: StepCostCurve(
                t_ms={q: 10.0 + 0.5 * b + 0.05 * b * q for q in (1, 2, 4, 8, 16, 32)},
                device="cpu",
                dtype="float64",
                model="tiny",
                threads=1,
                batch=b,
            )
            for b in (1, 2, 4)
        }
    )


def drive(engine, decoder, arrivals: dict, cancel: dict | None = None, check=None) -> dict:
    """Step `decoder` until it is idle. `arrivals[step]`: `(key, prompt, config, drafter)` to add
    (as `engine.request`s) before that step; `cancel[step]`: keys to cancel before it;
    `check(decoder, handles, chunks)` runs after every step. Returns every key's chunks."""
    cancel = cancel or {}
    handles, chunks = {}, {}
    step = 0
    while decoder.busy or any(s >= step for s in arrivals):
        for key in cancel.get(step, ()):
            assert decoder.cancel(handles[key])
        for key, prompt, config, drafter in arrivals.get(step, ()):
            handles[key] = decoder.add(engine.request(prompt, config, drafter))
            chunks[key] = []
        keys = {h: k for k, h in handles.items()}
        for handle, chunk in decoder.step():
            chunks[keys[handle]].append(chunk)
        if check is not None:
            check(decoder, handles, chunks)
        step += 1
    return chunks


def tokens_of(chunks) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def eos_model(arch: str, seed: int, prompt: np.ndarray, max_new_tokens: int):
    """`(model, unstopped answer, eos)`: the seeded tiny model with, as its EOS, the first token
    of its greedy answer to `prompt` (from the fourth on) not seen earlier in that answer."""
    unstopped = greedy(tiny_model(arch, seed), prompt, max_new_tokens)
    k = next(i for i in range(3, max_new_tokens) if unstopped[i] not in unstopped[:i])
    return tiny_model(arch, seed, eos=int(unstopped[k])), unstopped, int(unstopped[k])


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


def seen_once(depth: int) -> Draft:
    """A chain the trie saw once: scores 1/2, 1/4, 1/8, ..."""
    d = chain(list(range(1, depth + 1)), root=0)
    return Draft(
        d.tokens, d.parent, d.depth, np.concatenate([[1.0], 0.5 ** np.arange(1, depth + 1)])
    )


def first_stop(tokenizer, tokens: np.ndarray, stop: str) -> int:
    """Tokens up to the one whose text completes `stop` (plain decoding's stop point)."""
    return next(
        i + 1
        for i in range(len(tokens))
        if stop in tokenizer.decode(tokens[: i + 1], skip_special_tokens=True)
    )


def cached_row(model, context: np.ndarray, chunk: int = 7):
    """A one-row batch cache holding `context` (prefilled in chunks, as the engine does)."""
    from generation.kv_cache import BatchKVCache
    from generation.verify import prefill_row

    cache = BatchKVCache(model, max_rows=1)
    prefill_row(model, cache, 0, np.asarray(context, dtype=np.int64), chunk)
    return cache


def tree_logits(model, cache, draft: Draft) -> torch.Tensor:
    """`[q, vocab]`: one verify pass of `draft` after row 0 of `cache` (the caller then keeps
    what it accepts: `cache.keep([0], [nodes])`)."""
    from generation.verify import Block, forward_blocks

    return forward_blocks(model, cache, slice(0, 1), [Block.of_draft(draft)])[0]


def reference_cache(model, ids: np.ndarray) -> tf.DynamicCache:
    """transformers' own cache after a plain forward over `ids`."""
    cache = tf.DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.from_numpy(np.asarray(ids)).unsqueeze(0), cache=cache, use_cache=True)
    return cache
