"""Pinned POPE / CHAIR / VQA metrics on hand-made answer files, and `jax-align eval`."""

from __future__ import annotations

import json
import os
import random
import re
import sys
import types

import pytest

from jax_align.cli.main import main as cli_main
from jax_align.eval import (
    Mention,
    SceneObjects,
    chair_metrics,
    extract_mentions,
    parse_yes_no,
    pope_metrics,
    vqa_correct,
    vqa_metrics,
)
from jax_align.world import WorldConfig

CONFIG = WorldConfig()
SHAPE_WORDS = {**{s: s for s in CONFIG.shapes}, **{CONFIG.plural(s): s for s in CONFIG.shapes}}


def _write(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def test_yes_no_parser():
    cases = {
        "Yes.": "yes",
        "yes": "yes",
        " YES, there is a circle.": "yes",
        "No.": "no",
        "no, there is none": "no",
        "Nope.": "neither",
        "": "neither",
        "Maybe yes.": "neither",
        "Yes/no": "neither",
        "\n\nNo": "no",
        "Y.e.s.": "yes",
    }
    for text, want in cases.items():
        assert parse_yes_no(text) == want, text


def test_vqa_rule():
    assert vqa_correct("Red.", "Red.")
    assert vqa_correct("red", "Red.")
    assert vqa_correct(" Top left.", "Top left.")
    assert vqa_correct("two circles", "Two.")
    assert not vqa_correct("Top", "Top left.")
    assert not vqa_correct("A circle.", "Circle.")
    assert not vqa_correct("twofold", "Two.")


def test_mentions():
    got = extract_mentions(
        "There is a small red circle. Two blue squares, a red small star and crosses.",
        SHAPE_WORDS,
        CONFIG.colors,
    )
    assert got == [
        Mention("circle", "red"),
        Mention("square", "blue"),
        Mention("star", None),
        Mention("cross", None),
    ]
    assert extract_mentions("Nothing to see; a hexagon.", SHAPE_WORDS, CONFIG.colors) == []


def test_pope_metrics_hand_computed():
    labels = ["yes", "yes", "no", "no", "yes", "no"]
    responses = ["Yes.", "no", "Yes, there is.", "No.", "Maybe", "neither"]
    m, c = pope_metrics(labels, responses)
    # predictions: yes, no, yes, no, neither, neither -> TP=1, FP=1, TN=1
    assert m["accuracy"] == pytest.approx(2 / 6)
    assert m["precision"] == pytest.approx(1 / 2)
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert m["yes_ratio"] == pytest.approx(2 / 6)
    assert m["false_positive_rate"] == pytest.approx(1 / 3)
    assert c == {"n": 6, "tp": 1, "fp": 1, "tn": 1, "fn": 2, "neither": 2}
    empty, _ = pope_metrics([], [])
    assert all(v == 0.0 for v in empty.values())
    none_yes, _ = pope_metrics(["yes"], ["No."])
    assert none_yes["precision"] == 0.0 and none_yes["f1"] == 0.0


SCENE_A = [{"shape": "circle", "color": "red"}, {"shape": "square", "color": "blue"}]
SCENE_B = [{"shape": "triangle", "color": "green"}]
SCENE_C = [{"shape": "star", "color": "yellow"}, {"shape": "star", "color": "white"}]
CAPTIONS = [
    # (red, circle) ok; (green, square) wrong colour; (None, triangle) absent -> 3 mentions, 2 hallucinated,
    # recall 1/2
    ("a", "There is a red circle. There is a green square. There are two triangles."),
    # 1 mention, ok, recall 1
    ("b", "There is a small green triangle at the center."),
    # (white, star) ok; (blue, star) wrong colour -> 2 mentions, 1 hallucinated, recall 1/2
    ("c", "There are two white stars and a blue star."),
    # (red, circle) absent -> 1 mention, 1 hallucinated, recall 0
    ("b2", "A red circle."),
    # no mention: counts for chair_s's denominator only, recall 0
    ("c2", "Nothing here."),
]
CHAIR_I = 4 / 7
CHAIR_S = 3 / 5
RECALL = (0.5 + 1 + 0.5 + 0 + 0) / 5


def test_chair_hand_computed():
    scenes = {"a": SCENE_A, "b": SCENE_B, "c": SCENE_C, "b2": SCENE_B, "c2": SCENE_C}
    m, c = chair_metrics(
        [t for _, t in CAPTIONS],
        [SceneObjects.from_record(scenes[k]) for k, _ in CAPTIONS],
        SHAPE_WORDS,
        CONFIG.colors,
    )
    assert m["chair_i"] == pytest.approx(CHAIR_I)
    assert m["chair_s"] == pytest.approx(CHAIR_S)
    assert m["recall"] == pytest.approx(RECALL)
    assert c == {"captions": 5, "mentions": 7, "hallucinated": 4, "hallucinated_captions": 3}
    zero, _ = chair_metrics(["Nothing."], [SceneObjects.from_record(SCENE_A)], SHAPE_WORDS, CONFIG.colors)
    assert zero == {"chair_i": 0.0, "chair_s": 0.0, "recall": 0.0}


def test_vqa_hand_computed():
    m, c = vqa_metrics(
        ["Red.", "Top left.", "Two.", "Circle."],
        ["red", "Top", "two circles", "A circle."],
        ["color", "position", "count", "shape"],
    )
    assert m == {
        "accuracy": 0.5,
        "accuracy_color": 1.0,
        "accuracy_count": 1.0,
        "accuracy_position": 0.0,
        "accuracy_shape": 0.0,
    }
    assert c["n"] == 4 and c["correct"] == 2


@pytest.fixture()
def hand_world(tmp_path):
    """A hand-written world (no world.json: the default vocabulary) and shuffled answers in another folder."""
    world = tmp_path / "world"
    images = {"a": SCENE_A, "b": SCENE_B, "c": SCENE_C}
    _write(
        str(world / "scenes.jsonl"),
        [
            {"image": f"images/{k}.png", "objects": [{**o, "size": "small", "position": "center"} for o in v]}
            for k, v in images.items()
        ],
    )
    q = "Is there a {} in the image?"
    pope = [
        ("a", "circle", "yes", "random", "Yes."),
        ("a", "square", "yes", "random", "no"),
        ("b", "circle", "no", "random", "Yes, there is."),
        ("b", "star", "no", "random", "No."),
        ("c", "star", "yes", "random", "Maybe"),
        ("c", "cross", "no", "random", "neither"),
        # same image and prompt as the first record, another split, another answer
        ("a", "circle", "yes", "popular", "No."),
        ("b", "cross", "no", "adversarial", "Yes."),
        ("a", "square", "yes", "adversarial", "Yes."),
    ]
    _write(
        str(world / "pope.jsonl"),
        [
            {"image": f"images/{k}.png", "prompt": q.format(o), "label": lab, "object": o, "split": s}
            for k, o, lab, s, _ in pope
        ],
    )
    cap_prompts = {
        "b2": "Give a detailed description of the image.",
        "c2": "Give a detailed description of the image.",
    }
    cap_rows = [
        {"image": f"images/{k[0]}.png", "prompt": cap_prompts.get(k, "Describe the image in detail.")}
        for k, _ in CAPTIONS
    ]
    _write(str(world / "captions.jsonl"), cap_rows)
    vqa = [
        ("a", "What color is the object at the center?", "Red.", "color", "red"),
        ("b", "Where is the green triangle?", "Top left.", "position", "Top"),
        ("c", "How many stars are there?", "Two.", "count", "two stars"),
        ("a", "How many circles are there?", "One.", "count", "Three."),
    ]
    _write(
        str(world / "vqa.jsonl"),
        [{"image": f"images/{k}.png", "prompt": p, "answer": a, "category": c} for k, p, a, c, _ in vqa],
    )
    answers = tmp_path / "gen" / "answers"
    rng = random.Random(0)

    def answer_rows(rows, responses, as_list=False):
        out = []
        for r, resp in zip(rows, responses, strict=True):
            rec = {
                **r,
                "image": "../../world/" + r["image"],
                "response": [resp, "ignored"] if as_list else resp,
            }
            out.append(rec)
        rng.shuffle(out)
        return out

    pope_rows = [json.loads(line) for line in open(world / "pope.jsonl")]
    _write(str(answers / "pope.jsonl"), answer_rows(pope_rows, [p[-1] for p in pope]))
    _write(str(answers / "captions.jsonl"), answer_rows(cap_rows, [t for _, t in CAPTIONS], as_list=True))
    vqa_rows = [json.loads(line) for line in open(world / "vqa.jsonl")]
    _write(str(answers / "vqa.jsonl"), answer_rows(vqa_rows, [v[-1] for v in vqa]))
    return str(world), str(answers)


def test_cli_answers_writes_pinned_json(hand_world, tmp_path, capsys):
    world, answers = hand_world
    out = tmp_path / "metrics.json"
    assert cli_main(["eval", "--world", world, "--answers", answers, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "adversarial" in printed and "chair_i" in printed
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"pope", "chair", "vqa"}
    assert set(metrics["pope"]) == {"random", "popular", "adversarial"}
    for split in metrics["pope"].values():
        assert {"accuracy", "precision", "recall", "f1", "yes_ratio"} <= set(split)
        assert all(0.0 <= v <= 1.0 for v in split.values())
    r = metrics["pope"]["random"]
    assert r["accuracy"] == pytest.approx(2 / 6) and r["precision"] == pytest.approx(0.5)
    assert r["recall"] == pytest.approx(1 / 3) and r["yes_ratio"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(0.4)
    # popular: its own "No." was used, not the random split's "Yes." for the same image and prompt
    assert metrics["pope"]["popular"]["accuracy"] == 0.0 and metrics["pope"]["popular"]["yes_ratio"] == 0.0
    adv = metrics["pope"]["adversarial"]
    assert (
        adv["accuracy"] == 0.5
        and adv["precision"] == 0.5
        and adv["recall"] == 1.0
        and adv["yes_ratio"] == 1.0
    )
    assert adv["false_positive_rate"] == 1.0
    assert metrics["chair"]["chair_i"] == pytest.approx(CHAIR_I)
    assert metrics["chair"]["chair_s"] == pytest.approx(CHAIR_S)
    assert metrics["chair"]["recall"] == pytest.approx(RECALL)
    assert metrics["vqa"]["accuracy"] == pytest.approx(0.5)
    assert metrics["vqa"]["accuracy_count"] == pytest.approx(0.5)


def test_cli_reports_missing_answer(hand_world, capsys):
    world, answers = hand_world
    rows = [json.loads(line) for line in open(os.path.join(answers, "vqa.jsonl"))][1:]
    _write(os.path.join(answers, "vqa.jsonl"), rows)
    code = cli_main(["eval", "--world", world, "--answers", answers])
    printed = capsys.readouterr().err
    assert code == 2 and "vqa.jsonl: no answer for image" in printed


def _independent_metrics(world, answers):
    """A second, separate implementation of the pinned definitions, reading answer records directly."""
    scenes = {}
    for line in open(os.path.join(world, "scenes.jsonl")):
        r = json.loads(line)
        scenes[r["image"]] = [(o["color"], o["shape"]) for o in r["objects"]]

    def words(text):
        return re.sub(r"[!-/:-@\[-`{-~]", "", text.lower()).split()

    out = {"pope": {}}
    pope = [json.loads(line) for line in open(os.path.join(answers, "pope.jsonl"))]
    for split in ("random", "popular", "adversarial"):
        rows = [r for r in pope if r["split"] == split]
        pred = [(words(r["response"]) or [""])[0] for r in rows]
        tp = sum(p == "yes" and r["label"] == "yes" for p, r in zip(pred, rows, strict=True))
        fp = sum(p == "yes" and r["label"] == "no" for p, r in zip(pred, rows, strict=True))
        tn = sum(p == "no" and r["label"] == "no" for p, r in zip(pred, rows, strict=True))
        pos = sum(r["label"] == "yes" for r in rows)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / pos if pos else 0.0
        out["pope"][split] = {
            "accuracy": (tp + tn) / len(rows),
            "precision": prec,
            "recall": rec,
            "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0,
            "yes_ratio": (tp + fp) / len(rows),
        }
    plural = {CONFIG.plural(s): s for s in CONFIG.shapes}
    mentions = halluc = bad = 0
    recalls = []
    caps = [json.loads(line) for line in open(os.path.join(answers, "captions.jsonl"))]
    for r in caps:
        objs = scenes[r["image"]]
        w = words(r["response"][0] if isinstance(r["response"], list) else r["response"])
        said, n_bad = set(), 0
        for i, word in enumerate(w):
            shape = word if word in CONFIG.shapes else plural.get(word)
            if shape is None:
                continue
            color = w[i - 1] if i and w[i - 1] in CONFIG.colors else None
            mentions += 1
            if not any(s == shape and (color is None or c == color) for c, s in objs):
                n_bad += 1
            if color:
                said.add((color, shape))
        halluc += n_bad
        bad += n_bad > 0
        recalls.append(len(set(objs) & said) / len(set(objs)))
    out["chair"] = {
        "chair_i": halluc / mentions,
        "chair_s": bad / len(caps),
        "recall": sum(recalls) / len(recalls),
    }
    vqa = [json.loads(line) for line in open(os.path.join(answers, "vqa.jsonl"))]
    ok = 0
    for r in vqa:
        resp, ans = " ".join(words(r["response"])), " ".join(words(r["answer"]))
        ok += resp == ans or resp.startswith(ans + " ")
    out["vqa"] = {"accuracy": ok / len(vqa)}
    return out


def test_holdout_style_recomputation_matches(tmp_path):
    world = tmp_path / "w"
    assert cli_main(["world", "--seed", "123", "--n", "60", "--out", str(world), "--no-tokenizer"]) == 0
    answers = tmp_path / "answers"
    rng = random.Random(5)
    scenes = {json.loads(line)["image"]: json.loads(line)["objects"] for line in open(world / "scenes.jsonl")}
    colors, shapes = list(CONFIG.colors), list(CONFIG.shapes)

    def respond(name, r):
        if name == "pope.jsonl":
            return rng.choice(["Yes.", "No.", "yes", "No, there is not.", "I think so.", ""])
        if name == "vqa.jsonl":
            return rng.choice([r["answer"], r["answer"].lower().rstrip(".") + " indeed", "Blue.", "Top."])
        parts = [f"There is a {o['color']} {o['shape']}." for o in scenes[r["image"]] if rng.random() < 0.8]
        for _ in range(rng.choice([0, 0, 1, 2])):
            parts.insert(
                rng.randrange(len(parts) + 1), f"There is a {rng.choice(colors)} {rng.choice(shapes)}."
            )
        return " ".join(parts)

    for name in ("pope.jsonl", "captions.jsonl", "vqa.jsonl"):
        rows = [json.loads(line) for line in open(world / name)]
        rows = [{**r, "response": respond(name, r)} for r in rows]
        rng.shuffle(rows)
        _write(str(answers / name), rows)
    out = tmp_path / "m.json"
    assert cli_main(["eval", "--world", str(world), "--answers", str(answers), "--json", str(out)]) == 0
    ours = json.loads(out.read_text())
    theirs = _independent_metrics(str(world), str(answers))
    assert theirs["chair"]["chair_i"] > 0 and theirs["pope"]["adversarial"]["yes_ratio"] > 0
    for section, values in theirs.items():
        if section == "pope":
            for split, m in values.items():
                for k, v in m.items():
                    assert ours["pope"][split][k] == pytest.approx(v, abs=1e-9), (split, k)
        else:
            for k, v in values.items():
                assert ours[section][k] == pytest.approx(v, abs=1e-9), (section, k)


def test_cli_model_calls_generate_records(hand_world, tmp_path, monkeypatch, capsys):
    world, _ = hand_world
    calls = []

    def generate_records(
        model_path, records, *, base_dir, max_new_tokens, batch_size, temperature=0.0, seed=0
    ):
        calls.append((model_path, len(records), base_dir, max_new_tokens, batch_size, temperature))
        assert all(os.path.exists(os.path.join(base_dir, "scenes.jsonl")) for _ in records[:1])
        if "detail" in records[0]["prompt"]:
            return [t for _, t in CAPTIONS]
        if records[0]["prompt"].startswith("Is there"):
            return ["Yes."] * len(records)
        return ["red", "Top left", "Two.", "One."]

    fake = types.ModuleType("jax_align.generate")
    fake.generate_records = generate_records
    monkeypatch.setitem(sys.modules, "jax_align.generate", fake)
    out = tmp_path / "m.json"
    saved = tmp_path / "saved"
    code = cli_main(
        [
            "eval",
            "--world",
            world,
            "--model",
            "MODEL",
            "--json",
            str(out),
            "--max-new-tokens",
            "40",
            "--save-answers",
            str(saved),
        ]
    )
    assert code == 0, capsys.readouterr().out
    assert [c[1] for c in calls] == [9, 5, 4] and calls[0][0] == "MODEL" and calls[0][2] == world
    assert [c[3] for c in calls] == [16, 40, 16]
    metrics = json.loads(out.read_text())
    assert metrics["vqa"]["accuracy"] == 1.0 and metrics["pope"]["random"]["yes_ratio"] == 1.0
    assert metrics["chair"]["chair_i"] == pytest.approx(CHAIR_I)
    # the saved answers score the same through --answers
    again = tmp_path / "again.json"
    assert cli_main(["eval", "--world", world, "--answers", str(saved), "--json", str(again)]) == 0
    assert json.loads(again.read_text()) == metrics


def test_cli_model_without_generate_module_fails_clearly(hand_world, monkeypatch, capsys):
    world, _ = hand_world
    monkeypatch.setitem(sys.modules, "jax_align.generate", None)
    assert cli_main(["eval", "--world", world, "--model", "MODEL"]) == 2
    assert "generate_records" in capsys.readouterr().err
