"""A small hand-written corpus whose documents each answer exactly one of the test questions
(a module of its own: `conftest` is not importable by name when several test folders have one)."""

from __future__ import annotations

from retrieval import Document

# question -> the id of the one document that answers it
QUESTIONS = {
    "How do plants turn sunlight into chemical energy?": "photosynthesis",
    "What forms when a very massive star collapses under its own gravity?": "black-holes",
    "How does a client open a reliable connection to a server?": "tcp",
    "How do I make bread rise without commercial yeast?": "sourdough",
    "Which iron landmark was built for the 1889 world's fair in Paris?": "eiffel",
    "How does the body learn to fight a virus it has not met?": "vaccines",
    "What is molten rock that reaches the surface called?": "volcanoes",
    "How can I build a list from another list in one expression?": "list-comprehensions",
}

DOCS = [
    Document(
        "photosynthesis",
        "Photosynthesis is the process by which green plants and algae use light energy, "
        "water and carbon dioxide to make glucose and release oxygen. Chlorophyll in the "
        "chloroplasts absorbs the light.",
        title="Photosynthesis",
    ),
    Document(
        "black-holes",
        "A black hole is a region of spacetime where gravity is so strong that nothing, not "
        "even light, escapes. Stellar black holes form when a massive star collapses at the "
        "end of its life, often after a supernova.",
        title="Black holes",
    ),
    Document(
        "tcp",
        "TCP establishes a connection with a three-way handshake: the client sends SYN, the "
        "server answers SYN-ACK, and the client replies ACK. Sequence numbers and "
        "retransmission then make delivery reliable and ordered.",
        title="Transmission Control Protocol",
    ),
    Document(
        "sourdough",
        "Sourdough bread is leavened by a starter, a culture of wild yeast and lactic acid "
        "bacteria kept alive with flour and water, instead of baker's yeast. The long "
        "fermentation gives it a sour taste.",
        title="Sourdough",
    ),
    Document(
        "eiffel",
        "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, "
        "designed by Gustave Eiffel's company and completed for the 1889 Exposition "
        "Universelle.",
        title="Eiffel Tower",
    ),
    Document(
        "vaccines",
        "A vaccine trains the immune system by exposing it to a harmless form or part of a "
        "pathogen, so that memory B and T cells recognise the real virus or bacterium later "
        "and respond quickly.",
        title="Vaccines",
    ),
    Document(
        "volcanoes",
        "A volcano is an opening in the Earth's crust through which magma escapes. Once "
        "magma erupts onto the surface it is called lava; it cools into igneous rock such "
        "as basalt.",
        title="Volcanoes",
    ),
    Document(
        "list-comprehensions",
        "In Python a list comprehension such as [x * 2 for x in numbers if x > 0] builds a "
        "new list from an iterable in a single expression, with an optional condition.",
        title="List comprehensions",
    ),
    Document(
        "chess",
        "The Sicilian Defence is a chess opening that begins 1.e4 c5; Black fights for the "
        "centre from the side and gets an unbalanced game.",
        title="Sicilian Defence",
    ),
]
