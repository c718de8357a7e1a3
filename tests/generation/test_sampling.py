"""Sampling with lookahead draws from exactly the distribution plain sampling draws from.

The check: for a fixed prompt, `N_REFERENCE` continuations from transformers' own
`generate(do_sample=True)` (one batched call) against `N_LOOKAHEAD` lookahead runs with seeds
0, 1, ...; a two-sample chi-square test of homogeneity on the first token and on the whole
continuation must not reject at significance `ALPHA`. A 12-token vocabulary and a sharpened
output layer make the test sharp, and deliberately broken acceptance rules below show it has
the power to catch a wrong one. Seeds are fixed, so every outcome is deterministic; `ALPHA` is
the false-alarm rate the seeds were drawn under.
"""

import functools
from collections import Counter
from dataclasses import dataclass, replace
from itertools import product

import numpy as np
import pytest
import torch
from genhelpers import OracleDrafter, drive, fixed_engine, greedy, tiny_model, tokens_of, tree
from scipy.stats import chi2_contingency

from generation import LookaheadConfig, SamplingParams, sampling
from generation.accept import _coin
from generation.sampling import SamplingRule

VOCAB = 12
LENGTH = 3  # tokens per continuation
PROMPT = np.full(7, 5)  # one repeated token: the path decides what a repetition penalty hits
N_REFERENCE = 8_000
N_LOOKAHEAD = 400
ALPHA = 1e-3
SETTINGS = [  # (temperature, top_k, top_p)
    (1.0, 0, 1.0),
    (0.7, 0, 0.9),
    (1.5, 4, 1.0),
    (0.8, 6, 0.8),
]


def sharp_model(eos: int | None = None):
    """A float64 two-layer Llama over 12 tokens whose next-token distributions are far from
    uniform (a scaled output layer), so processors and warpers change them a lot."""
    model = tiny_model("llama", seed=11, vocab=VOCAB, eos=eos)
    with torch.no_grad():
        model.lm_head.weight.mul_(12.0)
    return model


@pytest.fixture(scope="module")
def model():
    return sharp_model()


@pytest.fixture(scope="module")
def engine(model, tokenizer):
    return fixed_engine(model, tokenizer)


@torch.inference_mode()
def next_token_table(model) -> dict[tuple[int, ...], np.ndarray]:
    """The raw model's next-token distribution after the prompt and every continuation
    prefix shorter than `LENGTH`: what the test drafters rank tokens by."""
    table = {}
    for depth in range(LENGTH):
        prefixes = list(product(range(VOCAB), repeat=depth))
        ids = torch.tensor([[*PROMPT, *p] for p in prefixes])
        probs = model(input_ids=ids).logits[:, -1].softmax(-1).numpy()
        table.update(zip(prefixes, probs, strict=True))
    return table


class RankDrafter:
    """Drafts a tree from the raw model's ranking after each node's path: `widths[d]` siblings
    at depth d + 1, the most likely tokens (drafts that hit often) or the least likely."""

    def __init__(self, table, likely: bool, widths=(3, 2, 1)) -> None:
        self.table, self.likely, self.widths = table, likely, widths

    def draft(self, context: np.ndarray, max_nodes: int):
        tokens, parents = [int(context[-1])], [-1]
        frontier = [(0, tuple(context[len(PROMPT) :].tolist()))]
        for width in self.widths:
            grown = []
            for node, path in frontier:
                if path not in self.table:
                    continue
                order = np.argsort(self.table[path], kind="stable")
                for token in (order[::-1] if self.likely else order)[:width].tolist():
                    tokens.append(token)
                    parents.append(node)
                    grown.append((len(tokens) - 1, (*path, token)))
            frontier = grown
        return tree(tokens[: max_nodes + 1], parents[: max_nodes + 1])

    def observe(self, tokens) -> None:
        pass


@pytest.fixture(scope="module")
def drafters(model):
    table = next_token_table(model)
    return {
        "likely": lambda: RankDrafter(table, likely=True),
        "unlikely": lambda: RankDrafter(table, likely=False),
    }


@functools.cache
@torch.inference_mode()
def plain_sampling(model, params: SamplingParams, eos: int | None = None) -> list[tuple]:
    """`N_REFERENCE` continuations from transformers' `generate(do_sample=True)`, cut after EOS
    (cached: several tests compare with one setting)."""
    torch.manual_seed(1234)
    ids = torch.from_numpy(PROMPT).repeat(N_REFERENCE, 1)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=True,
        max_new_tokens=LENGTH,
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        repetition_penalty=params.repetition_penalty,
    )[:, len(PROMPT) :].tolist()
    return [tuple(row[: row.index(eos) + 1] if eos in row else row) for row in out]


@dataclass
class Runs:
    continuations: list[tuple]
    accepted: int = 0  # accepted draft tokens, all runs
    cut: int = 0  # runs whose last accepted chunk was cut at an EOS

    @property
    def accepted_share(self) -> float:
        return self.accepted / sum(map(len, self.continuations))


def lookahead_sampling(engine, params: SamplingParams, drafter) -> Runs:
    """`N_LOOKAHEAD` lookahead continuations, seeds 0, 1, ..."""
    runs = Runs([])
    for seed in range(N_LOOKAHEAD):
        config = LookaheadConfig(LENGTH, draft_size=16, sampling=replace(params, seed=seed))
        result = engine.generate(PROMPT, config, drafter())
        stats = result.stats
        runs.continuations.append(tuple(result.token_ids))
        runs.accepted += sum(stats.accepted)
        runs.cut += stats.tokens < stats.steps + sum(stats.accepted)
    return runs


def homogeneity_p(a: list, b: list) -> float:
    """p-value of a chi-square test that samples `a` and `b` come from one distribution.
    Outcomes too rare for the test (an expected count under 5) are pooled into one."""
    counts = Counter(a), Counter(b)
    outcomes = sorted(set(a) | set(b))
    table = np.array([[c[o] for o in outcomes] for c in counts], dtype=float)
    expected = table.sum(0) * len(b) / (len(a) + len(b))  # the smaller sample's
    rare = expected < 5
    table = np.column_stack([table[:, ~rare], table[:, rare].sum(1)])
    table = table[:, table.sum(0) > 0]
    return float(chi2_contingency(table).pvalue)


def same_distribution(reference: list[tuple], runs: list[tuple]) -> tuple[float, float]:
    """p-values for the first token and for the whole continuation."""
    first = homogeneity_p([r[0] for r in reference], [r[0] for r in runs])
    return first, homogeneity_p(reference, runs)


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "drafts"),
    [(*setting, "likely") for setting in SETTINGS]
    + [(*setting, "unlikely") for setting in SETTINGS if setting[1]],
)
def test_lookahead_samples_the_plain_sampling_distribution(
    model, engine, drafters, temperature, top_k, top_p, drafts
):
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    reference = plain_sampling(model, params)
    runs = lookahead_sampling(engine, params, drafters[drafts])
    assert min(same_distribution(reference, runs.continuations)) > ALPHA
    if drafts == "likely":
        assert runs.accepted_share > 0.4
    else:  # the three least likely tokens: outside the top-k, never accepted
        assert runs.accepted == 0


def test_repetition_penalty_per_node_paths_match_plain_sampling(model, engine, drafters):
    params = SamplingParams(temperature=1.0, repetition_penalty=3.0)
    reference = plain_sampling(model, params)
    runs = lookahead_sampling(engine, params, drafters["likely"]).continuations
    assert min(same_distribution(reference, runs)) > ALPHA


def test_eos_inside_accepted_chunks_keeps_the_distribution(tokenizer, drafters):
    # The second most likely first token ends generation: often inside an accepted chunk.
    first = next_token_table(sharp_model())[()]
    eos = int(np.argsort(first)[-2])
    model = sharp_model(eos=eos)
    engine = fixed_engine(model, tokenizer)
    params = SamplingParams(temperature=0.9, top_p=0.95)
    reference = plain_sampling(model, params, eos=eos)
    runs = lookahead_sampling(engine, params, drafters["likely"])
    assert min(same_distribution(reference, runs.continuations)) > ALPHA
    assert all(eos not in r[:-1] for r in runs.continuations)  # nothing emitted past an EOS
    assert runs.cut > N_LOOKAHEAD // 20  # the EOS often fell inside an accepted chunk


# ---- deliberately broken rules: the test above must catch each of them ----------------------


def accept_without_renormalising(draft, target, generator):
    """BROKEN: a rejected child keeps its probability, and the bonus is drawn from the whole
    distribution (the rejected children included)."""
    path, node = [0], 0
    while True:
        p = target(node)
        children = np.flatnonzero(draft.parent == node).tolist()
        accepted = next((c for c in children if _coin(float(p[draft.tokens[c]]), generator)), None)
        if accepted is None:
            bonus = int(torch.multinomial(p, 1, generator=generator))
            break
        node = accepted
        path.append(node)
    nodes = np.asarray(path)
    return nodes, np.append(draft.tokens[nodes[1:]], bonus)


class UnwarpedRule(SamplingRule):
    """BROKEN, as the lookahead paper's code samples: draw a token from the raw softmax and
    accept the child carrying it; only the bonus token sees the processors and warpers."""

    def accept(self, draft, verified, context):
        path, node = [0], 0
        while True:
            raw = torch.softmax(verified[node].double(), -1)
            token = int(torch.multinomial(raw, 1, generator=self.generator))
            hits = np.flatnonzero((draft.parent == node) & (draft.tokens == token))
            if hits.size == 0:
                p = self.distribution(draft, verified, context, node)
                bonus = int(torch.multinomial(p, 1, generator=self.generator))
                break
            node = int(hits[0])
            path.append(node)
        nodes = np.asarray(path)
        return nodes, np.append(draft.tokens[nodes[1:]], bonus)


def root_path_only(draft, node):
    """BROKEN: processors see the root's context at every node, not the node's own path."""
    return np.empty(0, dtype=np.int64)


@pytest.mark.parametrize(
    ("broken", "params"),
    [
        (
            ("sample_accept", accept_without_renormalising),
            SamplingParams(temperature=0.7, top_p=0.9),
        ),
        (("rule", lambda params: UnwarpedRule(params)), SamplingParams(temperature=0.7, top_p=0.9)),
        (("path_to", root_path_only), SamplingParams(temperature=1.0, repetition_penalty=3.0)),
    ],
    ids=["no-renormalisation", "unwarped-acceptance", "parent-path-processors"],
)
def test_the_chi_square_test_catches_broken_rules(
    model, engine, drafters, monkeypatch, broken, params
):
    name, replacement = broken
    if name == "rule":
        monkeypatch.setattr(SamplingParams, "rule", replacement)
    else:
        monkeypatch.setattr(sampling, name, replacement)
    reference = plain_sampling(model, params)
    runs = lookahead_sampling(engine, params, drafters["likely"]).continuations
    assert min(same_distribution(reference, runs)) < ALPHA


# ---- edge cases and reproducibility ----------------------------------------------------------


@pytest.fixture(scope="module")
def wide():
    """A 512-token model with its greedy answer, and an oracle drafter that hits it."""
    model = tiny_model("qwen2", seed=5)
    prompt = np.random.default_rng(5).integers(0, 512, 20)
    return model, prompt, greedy(model, prompt, 30)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.3, top_k=1, seed=4),
        SamplingParams(temperature=1e-6, seed=4),
        SamplingParams(temperature=0.8, top_p=1e-9, seed=4),
    ],
    ids=["top_k=1", "tiny-temperature", "tiny-top_p"],
)
def test_degenerate_sampling_equals_greedy(wide, tokenizer, params):
    model, prompt, reference = wide
    engine = fixed_engine(model, tokenizer)
    oracle = OracleDrafter(np.concatenate([prompt, reference]), seed=2)
    config = LookaheadConfig(30, draft_size=8, sampling=params)
    result = engine.generate(prompt, config, oracle)
    assert result.token_ids == reference.tolist()
    assert sum(result.stats.accepted) > 0


def test_greedy_with_repetition_penalty_equals_transformers(wide, tokenizer):
    model, prompt, reference = wide
    penalised = greedy(model, prompt, 30, repetition_penalty=1.3)
    assert penalised.tolist() != reference.tolist()  # the penalty matters on this prompt
    engine = fixed_engine(model, tokenizer)
    oracle = OracleDrafter(np.concatenate([prompt, penalised]), seed=3)
    config = LookaheadConfig(30, draft_size=8, sampling=SamplingParams(repetition_penalty=1.3))
    assert engine.generate(prompt, config, oracle).token_ids == penalised.tolist()


def test_same_seed_and_drafts_give_the_same_answer(wide, tokenizer):
    model, prompt, _ = wide
    engine = fixed_engine(model, tokenizer)

    def answer(seed, draft_size=8):
        config = LookaheadConfig(
            30, draft_size=draft_size, sampling=SamplingParams(temperature=1.0, seed=seed)
        )
        return engine.generate(prompt, config).token_ids

    assert answer(7) == answer(7)
    assert answer(7) != answer(8)
    assert answer(7, draft_size=0) == answer(7, draft_size=0)


def test_processors_see_each_nodes_own_path(model, monkeypatch):
    """Repetition penalty on a tree: the processor is called with exactly the visited nodes'
    paths (prompt, emitted tokens, draft path), never a parent's or a sibling's."""
    seen = []
    original = sampling.RepetitionPenaltyLogitsProcessor.__call__

    def record(self, input_ids, scores):
        seen.append(input_ids[0].tolist())
        return original(self, input_ids, scores)

    monkeypatch.setattr(sampling.RepetitionPenaltyLogitsProcessor, "__call__", record)
    #          0(7)
    #        /  |   \
    #     1(5) 2(6) 3(8)
    #      |    |
    #     4(9) 5(10)
    draft = tree([7, 5, 6, 8, 9, 10], [-1, 0, 0, 0, 1, 2])
    context = np.array([*PROMPT[:-1], 7])
    logits = torch.randn(len(draft), VOCAB, dtype=torch.float64)
    paths = {0: [], 1: [5], 2: [6], 3: [8], 4: [5, 9], 5: [6, 10]}
    rule = SamplingRule(SamplingParams(temperature=1.0, repetition_penalty=2.0))
    for node, path in paths.items():
        seen.clear()
        rule.distribution(draft, logits, context, node)
        assert seen == [[*context.tolist(), *path]]
    for seed in range(30):  # through the walk: one call per visited node, in walk order
        rule = SamplingRule(SamplingParams(temperature=1.0, repetition_penalty=2.0, seed=seed))
        seen.clear()
        nodes, _ = rule.accept(draft, logits, context)
        assert seen == [[*context.tolist(), *paths[int(n)]] for n in nodes]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": float("inf")}, "repetition_penalty"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"seed": True}, "seed"),
    ],
)
def test_bad_sampling_values_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_processors_follow_generates_order():
    names = [
        type(p).__name__
        for p in SamplingParams(
            temperature=0.5, top_k=3, top_p=0.9, repetition_penalty=1.2
        ).processors()
    ]
    assert names == [
        "RepetitionPenaltyLogitsProcessor",
        "TemperatureLogitsWarper",
        "TopKLogitsWarper",
        "TopPLogitsWarper",
    ]
    assert list(SamplingParams(temperature=1.0, top_p=1.0).processors()) == []
    assert SamplingParams().greedy
    assert not SamplingParams(repetition_penalty=1.1).greedy


# ---- in a batch: each sequence keeps its distribution and its seed ----

PARAMS = SamplingParams(temperature=0.8, top_k=6, top_p=0.8)


@pytest.fixture(scope="module")
def table(model):
    return next_token_table(model)


def test_batched_sampling_keeps_the_plain_sampling_distribution(model, table, tokenizer):
    engine = fixed_engine(model, tokenizer)
    arrivals = {}
    for seed in range(N_LOOKAHEAD):  # eight at a time, newcomers joining as others finish
        config = LookaheadConfig(LENGTH, draft_size=8, sampling=replace(PARAMS, seed=seed))
        drafter = RankDrafter(table, likely=seed % 4 != 0)  # mixed batches: hits and misses
        arrivals.setdefault(0, []).append((seed, PROMPT, config, drafter))
    decoder = engine.decoder(8)
    chunks = drive(engine, decoder, arrivals)
    runs = [tuple(tokens_of(chunks[seed])) for seed in range(N_LOOKAHEAD)]
    assert min(same_distribution(plain_sampling(model, PARAMS), runs)) > ALPHA
    assert decoder.stats.mean_batch > 6
    assert decoder.stats.tokens > decoder.stats.sequences  # drafts were accepted


def test_a_seed_repeats_its_answer_whatever_shares_the_batch(model, table, tokenizer):
    engine = fixed_engine(model, tokenizer)
    length = 12

    def arrival(key, seed, likely=True):
        config = LookaheadConfig(length, draft_size=4, sampling=replace(PARAMS, seed=seed))
        return key, PROMPT, config, RankDrafter(table, likely=likely)

    alone = drive(engine, engine.decoder(4), {0: [arrival("x", 7)]})
    crowded = drive(
        engine,
        engine.decoder(4),
        {
            0: [arrival("a", 1), arrival("b", 2, likely=False)],
            1: [arrival("x", 7)],
            2: [arrival("c", 3), arrival("d", 4)],
        },
    )
    single = engine.generate(PROMPT, arrival("x", 7)[2], RankDrafter(table, likely=True))
    assert tokens_of(alone["x"]) == tokens_of(crowded["x"]) == single.token_ids
    others = {tuple(tokens_of(crowded[k])) for k in "abcd"}
    assert len(others | {tuple(single.token_ids)}) > 2  # the seeds do differ
    assert len(crowded["x"]) < length  # some chunk held several tokens
