"""``jax-align data validate``: names exactly the bad records, each once, as PATH:RECORD: FIELD: MESSAGE, and
exits 1; a clean file exits 0. Covers JSONL, JSON arrays, Parquet and ``datasets`` directories."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from data_fixtures import (
    build_model_dir,
    embed_images,
    pairwise_record,
    ranked_record,
    sft_record,
    write_datasets_dir,
    write_jsonl,
    write_parquet,
    write_png,
)

from jax_align.cli.main import main
from jax_align.data.records import parse_record
from jax_align.data.tokenize import ChatTokenizer

LINE = re.compile(r"^(?P<path>.+):(?P<record>\d+): (?P<field>[^:]+): (?P<message>.+)$")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("validate")
    for i in range(6):
        write_png(str(r / "img" / f"{i}.png"), 16 + i, 10 + i, seed=i)
    (r / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    build_model_dir(str(r / "model"))
    return r


def _run(argv, capsys):
    code = main(["data", "validate", *argv])
    out = capsys.readouterr().out
    return code, [line for line in out.splitlines() if line.strip()]


def _named(lines, path):
    found = []
    for line in lines:
        m = LINE.match(line)
        assert m, f"bad output line: {line!r}"
        assert m["path"] == path
        found.append((int(m["record"]), m["field"], m["message"]))
    return found


def _pairwise_with_faults():
    recs = [pairwise_record(i, image=f"img/{i % 6}.png") for i in range(14)]
    faults = {}
    recs[1]["image"] = "img/nowhere.png"
    faults[2] = ("image", "file not found")
    recs[3]["image"] = "img/corrupt.png"
    faults[4] = ("image", "cannot decode")
    del recs[5]["rejected"]
    faults[6] = ("rejected", "missing field")
    recs[7]["chosen"] = {"text": "x"}
    faults[8] = ("chosen", "wrong type")
    recs[8]["rejected"] = "   "
    faults[9] = ("rejected", "empty response")
    recs[10]["rejected"] = recs[10]["chosen"]
    faults[11] = ("rejected", "identical to chosen")
    recs[12]["margin"] = "wide"
    faults[13] = ("margin", "wrong type")
    return recs, faults


def test_jsonl_faults_named_once_with_line_numbers(root, capsys):
    recs, faults = _pairwise_with_faults()
    path = str(root / "pairs_bad.jsonl")
    # an invalid JSON line after record 13 shifts nothing but is itself named; blank lines keep numbering
    write_jsonl(path, recs + [{}], raw_lines={14: '{"prompt": "q", "chosen": '})
    with open(path, "a") as f:
        f.write("\n" + '{"prompt": "q", "chosen": "a", "rejected": "b"}' + "\n")  # line 17: no image
    code, lines = _run([path, "--format", "pairwise"], capsys)
    assert code == 1
    found = _named(lines, path)
    expected = dict(faults) | {15: ("record", "invalid JSON"), 17: ("image", "missing field")}
    assert [r for r, _, _ in found] == sorted(expected)  # every bad record exactly once, in file order
    for record, field, message in found:
        want_field, want_text = expected[record]
        assert field == want_field and want_text in message, (record, field, message)


def test_clean_files_exit_zero(root, capsys):
    path = str(root / "clean.jsonl")
    write_jsonl(path, [pairwise_record(i, image=f"img/{i % 6}.png") for i in range(8)])
    assert _run([path, "--format", "pairwise"], capsys) == (0, [])
    sft = str(root / "clean_sft.jsonl")
    write_jsonl(
        sft, [sft_record(i, image=f"img/{i % 6}.png") for i in range(5)] + [sft_record(9, image=None)]
    )
    assert _run([sft, "--format", "sft"], capsys) == (0, [])
    ranked = str(root / "clean_ranked.jsonl")
    write_jsonl(ranked, [ranked_record(i, k=3, image=f"img/{i % 6}.png") for i in range(5)])
    assert _run(
        [ranked, "--format", "ranked", "--model", str(root / "model"), "--max-length", "64"], capsys
    ) == (0, [])


def test_parquet_and_datasets_with_corrupt_embedded_bytes(root, capsys, monkeypatch):
    recs, faults = _pairwise_with_faults()
    embedded = embed_images(recs, str(root))
    embedded[4]["image"] = {"bytes": b"garbage bytes", "path": None}
    faults = dict(faults) | {5: ("image", "cannot decode")}
    # Parquet/datasets need one schema: drop the rows whose types would not fit a column
    keep = [i for i in range(len(embedded)) if i not in (7, 12, 5)]
    rows = [embedded[i] for i in keep]
    expected = {keep.index(r - 1) + 1: faults[r] for r in faults if r - 1 in keep}
    for name, writer in (("bad.parquet", write_parquet), ("bad_ds", write_datasets_dir)):
        path = str(root / name)
        # datasets stats image paths while saving: let the dangling one exist until the dataset is written
        dangling = root / "img" / "nowhere.png"
        dangling.write_bytes(b"")
        with monkeypatch.context() as m:
            m.chdir(root)
            writer(path, rows)
        dangling.unlink()
        code, lines = _run([path, "--format", "pairwise"], capsys)
        assert code == 1
        found = _named(lines, path)
        assert [r for r, _, _ in found] == sorted(expected), (name, found)
        for record, field, message in found:
            assert field == expected[record][0] and expected[record][1] in message


def test_ranked_and_json_array_formats(root, capsys):
    recs = [ranked_record(i, k=3, image=f"img/{i % 6}.png") for i in range(7)]
    recs[1]["responses"] = ["same .", "same .", " same . "]
    recs[3]["responses"] = ["only one ."]
    del recs[5]["prompt"]
    amp_human = {"from": "human", "value": "<image>\ndescribe the picture"}
    recs.append(
        {
            "image": "img/0.png",
            "output_1": [amp_human, {"from": "gpt", "value": "a cat ."}],
            "output_2": [amp_human, {"from": "gpt", "value": ""}],
        }
    )
    recs.append(
        {"image": "img/1.png", "prompt": "describe", "output_list": ["a .", "b ."], "score_list": [1, 2]}
    )
    path = str(root / "ranked.json")
    import json

    with open(path, "w") as f:
        json.dump(recs, f)
    code, lines = _run([path, "--format", "ranked"], capsys)
    assert code == 1
    found = _named(lines, path)
    assert [(r, f) for r, f, _ in found] == [
        (2, "responses"),
        (4, "responses"),
        (6, "prompt"),
        (8, "output_2"),
    ]
    assert "fewer than two distinct" in found[0][2] and "empty response" in found[3][2]


def test_too_long_even_after_truncation_needs_model(root, capsys):
    recs = [pairwise_record(i, image=f"img/{i % 6}.png") for i in range(5)]
    recs[2] = {
        "prompt": "<image> <image> <image> <image> <image> <image>\nwhat ?",
        "chosen": "yes .",
        "rejected": "no .",
        "images": [f"img/{i}.png" for i in range(6)],
    }
    # 100 prompt words: cutting half of them is not enough
    recs[3]["prompt"] = "<image>\n" + "what color is the cat " * 20
    recs[4]["prompt"] = "<image>\nwhat color is the big red cat on the mat ?"  # fits once trimmed
    recs[4]["chosen"] = "the cat is red and it is sitting on the mat next to the dog ."
    path = str(root / "long.jsonl")
    write_jsonl(path, recs)
    assert _run([path, "--format", "pairwise"], capsys) == (0, [])  # no model: no length check
    model = str(root / "model")
    code, lines = _run([path, "--format", "pairwise", "--model", model, "--max-length", "28"], capsys)
    assert code == 1
    found = _named(lines, path)
    assert [(r, f) for r, f, _ in found] == [(3, "prompt"), (4, "prompt")]
    for _, _, message in found:
        assert "too long even after truncation" in message and "max_length is 28" in message
    # record 5 was longer than 28 tokens: truncation made it fit
    example, _ = parse_record(recs[4], "pairwise", base_dir=str(root))
    assert ChatTokenizer.from_model_dir(model).tokenize(example).length("prefix_shared") > 28


def test_each_problem_mode_and_console_script(root):
    path = str(root / "two_faults.jsonl")
    write_jsonl(
        path,
        [
            {"prompt": "q", "chosen": "", "rejected": "b", "image": "img/missing.png"},
            pairwise_record(1, image="img/1.png"),
        ],
    )
    exe = os.path.join(os.path.dirname(sys.executable), "jax-align")
    proc = subprocess.run(
        [exe, "data", "validate", path, "--format", "pairwise"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    missing = os.path.normpath(str(root / "img" / "missing.png"))
    assert proc.stdout.splitlines() == [
        f"{path}:1: chosen: empty response; also image: missing image: file not found: {missing}"
    ]
    assert "2 records, 1 bad records" in proc.stderr
    proc = subprocess.run(
        [exe, "data", "validate", path, "--format", "pairwise", "--each-problem"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stdout.count(f"{path}:1:") == 2


def test_align2_raw_formats_name_each_bad_record(root, capsys):
    """Align²LLaVA's raw question / answer preference records (spec §3.6) validate with their own formats."""
    q_ok = {"id": "q1", "image": "img/0.png", "questions": [["Where is it?", "What colour?"], ["Is it red?"]],
            "score": [0.5, 1.0]}
    a_ok = {"id": "a1", "image": "img/1.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": ["A cat.", "A dog."],
                                                              "score": [1.0, 0.3]},
        {"from": "human", "value": "More?"}, {"from": "gpt", "value": ["No.", "Yes."], "score": [0.2, 0.9]}]}
    questions = [q_ok,
                 {**q_ok, "questions": [["Where?"], [""]]},                    # 2: an empty question
                 {**q_ok, "score": [1.0]},                                     # 3: one score for two sets
                 {k: v for k, v in q_ok.items() if k != "questions"},          # 4: no questions
                 {**q_ok, "image": "img/nowhere.png"}]                         # 5: missing image
    questions = [{**r, "id": f"q{n}"} for n, r in enumerate(questions)]
    path = str(root / "a2_questions.jsonl")
    write_jsonl(path, questions)
    code, lines = _run([path, "--format", "align2_questions"], capsys)
    named = _named(lines, path)
    assert code == 1 and [r for r, _, _ in named] == [2, 3, 4, 5]
    assert named[0][1] == "questions[1][0]" and named[1][1] == "score" and named[2][1] == "questions"
    answers = [a_ok,
               {**a_ok, "conversations": [a_ok["conversations"][0], {"from": "gpt", "value": "A cat."}]},  # 2
               {**a_ok, "conversations": [*a_ok["conversations"][:3],
                                          {"from": "gpt", "value": ["No.", "Yes."], "score": [0.2]}]},      # 3
               q_ok]                                                                                       # 4
    answers = [{**r, "id": f"a{n}"} for n, r in enumerate(answers)]
    path = str(root / "a2_answers.jsonl")
    write_jsonl(path, answers)
    code, lines = _run([path, "--format", "align2_answers", "--each-problem"], capsys)
    named = _named(lines, path)
    assert code == 1 and sorted({r for r, _, _ in named}) == [2, 3, 4]
    assert ("conversations[1].value" in {f for r, f, _ in named if r == 2}
            and {f for r, f, _ in named if r == 3} == {"conversations[3].score"}
            and {f for r, f, _ in named if r == 4} == {"conversations"})
    example, problems = parse_record(a_ok, "align2_answers", base_dir=str(root))
    assert not problems and [m[0].content for m in example.responses] == ["A cat.", "A dog."]
    example, _ = parse_record(q_ok, "align2_questions", base_dir=str(root))
    assert [m[0].content for m in example.responses] == ["Is it red?", "Where is it?\nWhat colour?"]  # best first
