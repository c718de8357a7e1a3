"""The replay channel: a prompt's previous answer, remembered and drafted again."""

import numpy as np
import pytest

from trie_store import AnswerMemory, RequestDrafter
from trie_store.replay import REPLAY_SCORE, Replay

PROMPT = [5, 6, 7, 8, 9]
ANSWER = [11, 12, 13, 14, 15, 16]


def test_the_memory_answers_only_the_very_same_prompt():
    memory = AnswerMemory()
    memory.remember(PROMPT, ANSWER)
    assert memory.recall(np.array(PROMPT)).tolist() == ANSWER  # a list or an array alike
    assert memory.recall(PROMPT[:-1]) is None
    assert memory.recall([*PROMPT, 10]) is None
    memory.remember(PROMPT, [20, 21])  # a newer answer replaces the old one
    assert memory.recall(PROMPT).tolist() == [20, 21]
    memory.remember([1], [])  # nothing to replay: not kept
    assert memory.recall([1]) is None
    assert len(memory) == 1


def test_the_memory_keeps_its_own_copy_and_drops_the_least_recently_used():
    memory = AnswerMemory(max_answers=2)
    answer = np.array(ANSWER)
    memory.remember([1], answer)
    answer[0] = 99  # the caller's array changes afterwards
    memory.remember([2], [22])
    assert memory.recall([1]).tolist() == ANSWER  # ... and [1] is now the most recent
    memory.remember([3], [33])
    assert memory.recall([2]) is None
    assert memory.recall([1]) is not None
    assert memory.recall([3]) is not None
    with pytest.raises(ValueError, match="max_answers"):
        AnswerMemory(max_answers=0)
    with pytest.raises(ValueError, match="negative"):
        memory.remember([1], [-4])


def test_a_replay_drafts_the_rest_of_the_answer_while_the_request_keeps_to_it():
    replay = Replay(ANSWER)
    draft = replay.draft(9, 4)
    draft.validate()
    assert draft.tokens.tolist() == [9, 11, 12, 13, 14]
    assert draft.parent.tolist() == [-1, 0, 1, 2, 3]
    assert draft.scores[1:].tolist() == pytest.approx([REPLAY_SCORE**d for d in range(1, 5)])
    replay.observe([11, 12, 13])
    assert replay.draft(13, 8).tokens.tolist() == [13, 14, 15, 16]  # to the end, no further
    assert replay.draft(13, 0).size == 0
    replay.observe([14, 15, 16])
    assert replay.draft(16, 8).size == 0  # at its end
    replay.observe([17])  # the new answer goes on past the old one: the channel is done
    assert not replay.on_track


def test_a_replay_falls_silent_at_the_first_token_that_differs():
    replay = Replay(ANSWER)
    replay.observe([11, 99])
    assert not replay.on_track
    replay.observe([13])  # even if the answers meet again later
    assert replay.draft(13, 4).size == 0
    with pytest.raises(ValueError, match="score"):
        Replay(ANSWER, score=0.0)


def test_the_drafter_puts_the_replayed_answer_first_and_drops_it_once_left():
    prompt = [1, 2, 3, 4, 1, 2, 3, 7, 1]  # "1 2 3" is continued by "4" and "7" in the prompt
    plain = RequestDrafter(prompt)
    replaying = RequestDrafter(prompt, previous_answer=[2, 3, 8, 9])
    draft = replaying.draft(prompt, 6)
    draft.validate()
    assert draft.tokens[1:5].tolist() == [2, 3, 8, 9]  # the replay's chain leads
    assert set(plain.draft(prompt, 6).tokens.tolist()) <= set(draft.tokens.tolist())
    for drafter in (plain, replaying):
        drafter.observe([2, 5])  # the new answer leaves the old one at its second token
    context = [*prompt, 2, 5]
    assert replaying.draft(context, 6) == plain.draft(context, 6)
