"""The prompt: instructions with the label list, marked entities, in-context examples balanced by relation,
and the image budget."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from camim.captioning.images import ImageItem
from camim.data.descriptions import relation_descriptions
from camim.data.types import Entity, MNREExample
from camim.zeroshot.prompt import (
    PromptBuilder,
    PromptInput,
    marked_text,
    request_hash,
    sample_key,
    select_shots,
)


def _ex(i: int, relation: str = "None") -> MNREExample:
    tokens = ["RT", "@x", ":", "Anna", "Lee", "married", "Bob", str(i)]
    return MNREExample(i, tokens, Entity("Anna Lee", 3, 5), Entity("Bob", 6, 7), f"{i}.jpg", relation)


def test_marked_text_and_sample_key():
    ex = _ex(0)
    assert marked_text(ex) == "RT @x : <head>Anna Lee</head> married <tail>Bob</tail> 0"
    tail_first = MNREExample(0, ["Bob", "loves", "Ann"], Entity("Ann", 2, 3), Entity("Bob", 0, 1), "a.jpg")
    assert marked_text(tail_first) == "<tail>Bob</tail> loves <head>Ann</head>"
    assert sample_key(ex) == sample_key(_ex(0, "/per/per/couple"))  # the gold label is not part of it
    assert sample_key(ex) != sample_key(_ex(1))


def test_instructions_list_labels_with_descriptions_or_bare():
    names = ["None", "/per/per/couple"]
    described = PromptBuilder(names, relation_descriptions(names)).instructions
    assert "- /per/per/couple: the two persons are a couple: married, engaged or dating" in described
    assert '{"relation": "<a label from the list' in described
    bare = PromptBuilder(["no_relation", "founded_by"], relation_descriptions(["no_relation", "founded_by"]))
    assert "- no_relation\n- founded_by\n" in bare.instructions


def test_select_shots_is_balanced_and_seeded():
    pool = [
        _ex(i, r) for i, r in enumerate(["None"] * 30 + ["/per/per/couple"] * 5 + ["/per/org/member_of"] * 2)
    ]
    shots = select_shots(pool, 7, seed=1)
    assert sorted(Counter(s.relation for s in shots).values()) == [2, 2, 3]  # counts differ by at most one
    assert [s.index for s in shots] == [s.index for s in select_shots(pool, 7, seed=1)]
    assert [s.index for s in shots] != [s.index for s in select_shots(pool, 7, seed=2)]
    # member_of runs out after 2: the rest come evenly from the relations that still have examples
    counts = Counter(s.relation for s in select_shots(pool, 11, seed=1))
    assert counts["/per/org/member_of"] == 2 and sorted(counts.values()) == [2, 4, 5]
    assert len({s.index for s in select_shots(pool, 37, seed=3)}) == 37 and select_shots(pool, 0, 1) == []


def test_request_turns_images_and_hash():
    img = lambda i: ImageItem(f"{i}.jpg", Path(f"/d/{i}.jpg"))  # noqa: E731
    shots = [PromptInput(_ex(i, "/per/per/couple"), img(i), "two people") for i in (10, 11, 12)]
    builder = PromptBuilder(["None", "/per/per/couple"], None, shots, max_images=3, with_caption=True)
    req = builder.request("k", PromptInput(_ex(1), img(1), ""))
    assert [m["role"] for m in req.messages] == ["user", "assistant"] * 3 + ["user"]
    assert req.messages[0]["content"][-1]["text"].startswith(builder.instructions + "\n\nPost: ")
    assert req.messages[1]["content"][0]["text"] == '{"relation": "/per/per/couple"}'
    # three images: the query's, then the first two examples'; the third example goes without
    assert [i.img_id for i in req.images()] == ["10.jpg", "11.jpg", "1.jpg"]
    last = req.messages[-1]["content"]
    assert last[0] == {"type": "image", "image": img(1)}
    assert last[1]["text"].endswith("Image: attached.\nImage description: not available.")
    assert (
        "Image: not available for this post; answer from the text.\nImage description: two people"
        in (req.messages[4]["content"][0]["text"])
    )
    text_only = PromptBuilder(["None"], None, max_images=0).request("k", PromptInput(_ex(1), img(1)))
    assert text_only.images() == [] and "answer from the text" in text_only.messages[-1]["content"][0]["text"]
    # the hash follows what is sent
    assert request_hash(req) == request_hash(builder.request("k", PromptInput(_ex(1), img(1), "")))
    assert request_hash(req) != request_hash(builder.request("k", PromptInput(_ex(1), None, "")))
