"""Passage embedding on Ray Data: the texts in blocks -> an actor pool of embedders -> the
vectors back in the driver, in order.

This is the pluggable embedding step (`retrieval.index.EmbedPassages`) of
`lookahead-rag index --distributed`: retrieval still chunks, picks and trains the FAISS index
and writes the directory, so the distributed index is the local one with its vectors computed
elsewhere. Each actor loads the embedder once, with retrieval's own loader. The vectors come back
to the driver (4 bytes x dim per passage: 1.5 GB per million MiniLM passages), which then
builds the one index from all of them (IVF-PQ is trained on them when the corpus is large).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from pipeline.model_thread import ModelThread
from retrieval import RetrievalError

_ERROR_LINE = re.compile(r"^[\w.]+(Error|Exception): \S")


@dataclass(frozen=True)
class EmbedOptions:
    embedder: str  # the model name the index records (`retrieval.load_embedder`)
    device: str = "cpu"  # the actors' device
    dtype: str = "auto"
    actors: int = 2
    block_rows: int = 1024  # passages per actor call: the unit of work and of progress
    batch_size: int = 32  # the encoder's batch within a block
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    progress: bool = True


class EmbedStage:
    """Ray Data actor: `text` -> `vector`, the row number kept so the driver can order them."""

    def __init__(self, options: EmbedOptions) -> None:
        from retrieval import load_embedder

        self.options = options
        self.model = ModelThread()  # Ray Data calls from another thread than this one
        self.embedder = self.model.run(
            load_embedder, options.embedder, options.device, options.dtype
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.model.run(self._embed, batch)

    def _embed(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        vectors = self.embedder.embed_passages(texts, batch_size=self.options.batch_size)
        return {"row": batch["row"], "vector": vectors}


def embed_on_ray(texts: Sequence[str], options: EmbedOptions) -> np.ndarray:
    """The texts' unit vectors `[len(texts), dim]`, in order, computed by `options.actors`
    embedder actors. Ray must be initialised (`ray_runtime.connected`)."""
    from ray import data as ray_data
    from ray.exceptions import RayError

    n = options.block_rows
    blocks = [
        pa.table({"row": np.arange(i, min(i + n, len(texts))), "text": list(texts[i : i + n])})
        for i in range(0, len(texts), n)
    ]
    if not blocks:
        raise RetrievalError("nothing to embed")
    dataset = ray_data.from_arrow(blocks).map_batches(
        EmbedStage,
        fn_constructor_args=(options,),
        compute=ray_data.ActorPoolStrategy(size=options.actors),
        batch_size=None,  # one block per call
        num_cpus=options.cpus_per_actor,
        num_gpus=options.gpus_per_actor,
    )
    vectors = np.empty((0, 0), dtype=np.float32)
    done = 0
    try:
        with tqdm(
            total=len(texts), unit="passage", desc="embedding", disable=not options.progress
        ) as bar:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                block = np.asarray(batch["vector"], dtype=np.float32)
                if not vectors.size:
                    vectors = np.empty((len(texts), block.shape[1]), dtype=np.float32)
                vectors[batch["row"]] = block
                done += len(block)
                bar.update(len(block))
    except RayError as exc:
        raise RetrievalError(f"distributed embedding failed: {_reason(exc)}") from exc
    if done != len(texts):
        raise RetrievalError(f"distributed embedding returned {done} of {len(texts)} vectors")
    return vectors


def _reason(exc: BaseException) -> str:
    """The failing actor's own `SomeError: message` line. Ray Data re-raises Ray's error (whose
    text holds the actor's traceback) from an empty `SystemException`, so search the chain."""
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    for error in chain:
        lines = [line.strip() for line in str(error).splitlines()]
        found = [line for line in lines if _ERROR_LINE.match(line)]
        if found:
            return found[-1]
    return f"{type(exc).__name__}: {exc}"
