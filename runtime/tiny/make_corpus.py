"""Regenerate ``corpus.txt``, the text the embedded ``tiny`` tokenizer is trained on.

The corpus mixes English prose, source code, JSON records, shell and SQL snippets, a little
non-English text and emoji, and chat transcripts in the tiny chat format with tool calls. All of it
is produced here from small hand-written pieces combined by a seeded random generator, so the output
is the same on every run. ``corpus.txt`` itself is committed as package data; this script is only
needed to change it (which must come with a new tiny model version).

    python -m runtime.tiny.make_corpus            # rewrites runtime/tiny/corpus.txt
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from runtime.tiny import corpus_essays as essays
from runtime.tiny import corpus_parts as parts

SEED = 20240611
TARGET_BYTES = 250_000


def sentence(rng: random.Random) -> str:
    """One English sentence from the subject / predicate / clause lists."""
    text = f"{rng.choice(parts.SUBJECTS)} {rng.choice(parts.PREDICATES)}"
    roll = rng.random()
    if roll < 0.45:
        text += f" {rng.choice(parts.CONNECTORS)} {rng.choice(parts.CLAUSES)}"
    elif roll < 0.6:
        text += f", {rng.choice(parts.ASIDES)}"
    return text + rng.choice([".", ".", ".", "!", "?" if text.startswith(("Why", "How")) else "."])


def prose_paragraph(rng: random.Random) -> str:
    """A paragraph of 3-7 generated sentences, sometimes opened with a number or date."""
    sentences = [sentence(rng) for _ in range(rng.randint(3, 7))]
    if rng.random() < 0.2:
        year, day = rng.randint(1890, 2031), rng.randint(1, 28)
        sentences.insert(0, f"On {rng.choice(parts.MONTHS)} {day}, {year}, the notes began again.")
    return " ".join(sentences)


def free_paragraph(rng: random.Random) -> str:
    """A paragraph of free-form sentences over the general vocabulary, or a short dialogue."""
    if rng.random() < 0.25:
        return "\n".join(f"{rng.choice(['A', 'B'])}: {rng.choice(parts.DIALOGUE)}" for _ in range(rng.randint(2, 5)))
    out = []
    for _ in range(rng.randint(3, 6)):
        words = [rng.choice(["The", "A", "That", "Every", "One", "Her", "His", "Our"]), rng.choice(parts.ADJECTIVES),
                 rng.choice(parts.COMMON_NOUNS), rng.choice(parts.PAST_VERBS), "the", rng.choice(parts.COMMON_NOUNS)]
        if rng.random() < 0.6:
            words += [rng.choice(parts.PREPOSITIONS), "the", rng.choice(parts.ADJECTIVES), rng.choice(parts.COMMON_NOUNS)]
        if rng.random() < 0.5:
            words.insert(rng.choice([3, len(words)]), rng.choice(parts.ADVERBS))
        out.append(" ".join(words) + rng.choice([".", ".", ".", "!"]))
    return " ".join(out)


def python_snippet(rng: random.Random) -> str:
    """A small Python function or class built from one of the code skeletons."""
    verb, noun = rng.choice(parts.VERBS), rng.choice(parts.NOUNS)
    field, other = rng.sample(parts.FIELDS, 2)
    skeleton = rng.choice(parts.PY_SKELETONS)
    return skeleton.format(
        verb=verb,
        noun=noun,
        Noun=noun.title().replace("_", ""),
        field=field,
        other=other,
        limit=rng.choice([3, 8, 10, 16, 64, 100, 255, 1024]),
        factor=rng.choice(["0.5", "1.5", "2", "0.25", "3.0"]),
    )


def other_code(rng: random.Random) -> str:
    """A shell, SQL, JavaScript or config snippet."""
    noun, field = rng.choice(parts.NOUNS), rng.choice(parts.FIELDS)
    skeleton = rng.choice(parts.OTHER_SKELETONS)
    return skeleton.format(
        noun=noun,
        field=field,
        limit=rng.choice([5, 10, 20, 50]),
        port=rng.choice([8080, 50051, 5432, 6379, 9000]),
        path=rng.choice(parts.PATHS),
    )


def json_record(rng: random.Random) -> str:
    """A JSON object with nested values, printed compactly or indented."""
    record: dict = {
        "id": rng.randint(1, 99999),
        "name": rng.choice(parts.PEOPLE),
        "city": rng.choice(parts.CITIES),
        rng.choice(parts.FIELDS): rng.choice([True, False, None, rng.randint(0, 500)]),
        "tags": rng.sample(parts.TAGS, rng.randint(0, 4)),
        "score": round(rng.uniform(0, 100), rng.randint(0, 3)),
    }
    if rng.random() < 0.5:
        record["items"] = [
            {"sku": f"{rng.choice('ABCDEFXYZ')}-{rng.randint(100, 999)}", "qty": rng.randint(1, 9)}
            for _ in range(rng.randint(1, 3))
        ]
    if rng.random() < 0.3:
        record["note"] = sentence(rng)
    indent = rng.choice([None, None, 2])
    return json.dumps(record, indent=indent, ensure_ascii=rng.random() < 0.2)


def tool_schema(tool: dict) -> dict:
    """The JSON schema of one of the example tools, as an agent would declare it."""
    properties = {name: {"type": kind, "description": desc} for name, kind, desc in tool["params"]}
    return {
        "type": "function",
        "function": {
            "name": tool["name"],
            "description": tool["description"],
            "parameters": {"type": "object", "properties": properties, "required": [tool["params"][0][0]]},
        },
    }


def tool_arguments(rng: random.Random, tool: dict) -> dict:
    """Plausible arguments for an example tool."""
    values = {
        "string": lambda: rng.choice(parts.CITIES + parts.PATHS + parts.QUERIES),
        "integer": lambda: rng.randint(1, 50),
        "boolean": lambda: rng.random() < 0.5,
        "number": lambda: round(rng.uniform(-20, 40), 1),
    }
    return {name: values[kind]() for name, kind, _ in tool["params"] if rng.random() < 0.85 or name == tool["params"][0][0]}


def turn(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def transcript(rng: random.Random) -> str:
    """A chat transcript in the tiny chat format: system with tools, user, tool calls, results, answer."""
    tools = rng.sample(parts.TOOLS, rng.randint(1, 3))
    schemas = "\n".join(json.dumps(tool_schema(t), ensure_ascii=False) for t in tools)
    out = [turn("system", f"{rng.choice(parts.SYSTEM_PROMPTS)}\n\n# Tools\n\n<tools>\n{schemas}\n</tools>")]
    out.append(turn("user", rng.choice(parts.USER_ASKS).format(city=rng.choice(parts.CITIES), noun=rng.choice(parts.NOUNS))))
    for _ in range(rng.randint(1, 2)):
        calls = rng.sample(tools, rng.randint(1, len(tools)))
        lead = rng.choice(parts.ASSISTANT_LEADS)
        body = "".join(
            f"\n<tool_call>\n{json.dumps({'name': t['name'], 'arguments': tool_arguments(rng, t)}, ensure_ascii=False)}\n</tool_call>"
            for t in calls
        )
        out.append(turn("assistant", (lead + body).lstrip("\n")))
        for t in calls:
            result = {"ok": rng.random() < 0.9, "result": json.loads(json_record(rng))}
            out.append(turn("tool", f"<tool_response>\n{json.dumps(result, ensure_ascii=False)}\n</tool_response>"))
    out.append(turn("assistant", " ".join(sentence(rng) for _ in range(rng.randint(1, 3)))))
    return "".join(out)


def build_corpus(seed: int = SEED, target_bytes: int = TARGET_BYTES) -> str:
    """The whole corpus text: hand-written pieces first, then generated sections in random order."""
    rng = random.Random(seed)
    chunks = list(essays.HANDWRITTEN) + list(essays.MULTILINGUAL)
    makers = [prose_paragraph] * 2 + [free_paragraph] * 4 + [python_snippet] * 2 + [other_code, json_record, json_record, transcript, transcript]
    size = sum(len(c.encode()) for c in chunks)
    while size < target_bytes:
        chunk = rng.choice(makers)(rng)
        chunks.append(chunk)
        size += len(chunk.encode()) + 2
    return "\n\n".join(chunks) + "\n"


def main() -> None:
    path = Path(__file__).with_name("corpus.txt")
    text = build_corpus()
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path} ({len(text.encode())} bytes)")


if __name__ == "__main__":
    main()
