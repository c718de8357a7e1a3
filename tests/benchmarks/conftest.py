"""Fixtures of the benchmark commands' tests: a tiny saved model, a prompt file, and the thread
counts the commands change put back."""

import json

import faiss
import pytest
import torch
from benchhelpers import PROMPTS
from genhelpers import tiny_model


@pytest.fixture(autouse=True)
def _restore_threads():
    """`--threads` sets process-wide torch and FAISS thread counts; later tests get theirs back."""
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    yield
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory, tokenizer):
    """A tiny llama saved with the default tokenizer, which the commands load like any model."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_model("llama", seed=5, vocab=len(tokenizer), eos=tokenizer.eos_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in PROMPTS))
    return path
