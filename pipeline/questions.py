"""Questions about the Python standard library, answerable from the default (stdlib) index:
what the demo asks and the serving benchmark replays."""

QUESTIONS = (
    "How do I parse a JSON string into a Python object?",
    "What does functools.lru_cache do?",
    "How can I run a shell command and capture its output?",
    "How do I join two filesystem paths with pathlib?",
    "What is the difference between a deque and a list?",
    "How do I format a datetime object as a string?",
    "How do I read a CSV file row by row?",
    "What does itertools.chain do?",
)
