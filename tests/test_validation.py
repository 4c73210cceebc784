"""Input checked at the edge: settings typed strictly, seeds and names bounded, untrusted JSON
read with a nesting limit and no NUL bytes, logins throttled and sessions expiring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pages.auth import LOCK_S, MAX_FAILURES, ExpiringTokens, LoginGuard
from teachlab import prompts
from teachlab.cli.common import parse_sets
from teachlab.config import STRATEGY_NAMES, StudyConfig, check_seed
from teachlab.errors import ConfigError, DataError
from teachlab.parsing import MAX_DEPTH, loads, nesting_depth
from teachlab.studies import create_study


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"prefill": "maybe"}, "prefill='maybe' is not true or false"),
        ({"prefill": 2}, "prefill=2 is not true or false"),
        ({"n_questions": "8x"}, "n_questions='8x' is not a whole number"),
        ({"n_questions": True}, "n_questions=True is not a whole number"),
        ({"n_questions": 2.5}, "n_questions=2.5 is not a whole number"),
        ({"dpo_lr": "nan"}, "dpo_lr='nan' is not a finite number"),
        ({"dpo_lr": "fast"}, "dpo_lr='fast' is not a number"),
        ({"scorer": 3}, "scorer=3 is not text"),
        ({"scorer": "vibes"}, "scorer='vibes' is not valid; choose one of loglik, generate"),
        ({"strategies": ["expert", "guess"]}, "'guess' is not a reasoning strategy"),
        ({"strategies": "expert,expert"}, "names a strategy twice"),
        ({"strategies": [1, 2]}, "give names separated by commas"),
        ({"n_questions": 0}, "n_questions=0 is out of range"),
        ({"load_in_4bit": True, "lora": False}, "turn lora on, or load_in_4bit off"),
    ],
)
def test_bad_settings_name_the_setting_and_the_fix(given: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        StudyConfig.from_dict(given)


def test_settings_given_as_text_are_typed_like_the_form_types_them() -> None:
    cfg = StudyConfig.from_dict(
        {
            "n_questions": "12",
            "prefill": "no",
            "scaffold": "ON",
            "dpo_lr": "1e-5",
            "strategies": "expert, rules",
            "n_rationales": 2,
        }
    )
    assert (cfg.n_questions, cfg.prefill, cfg.scaffold, cfg.dpo_lr) == (12, False, True, 1e-5)
    assert cfg.strategies == ("expert", "rules")  # one name per strategy, not per letter
    assert parse_sets(["prefill=off", "n_probe=20"]) == {"prefill": False, "n_probe": 20}
    with pytest.raises(ConfigError, match="prefill='maybe'"):
        parse_sets(["prefill=maybe"])


def test_the_known_strategies_are_the_ones_with_prompts() -> None:
    assert set(STRATEGY_NAMES) == set(prompts.STRATEGIES)


@pytest.mark.parametrize("seed", [-1, 2**32, 10**25, "12ab", 1.5, True])
def test_seeds_outside_what_the_libraries_take_are_refused(seed: object) -> None:
    with pytest.raises(ConfigError, match=r"from 0 to 4294967295"):
        check_seed(seed)
    assert check_seed(2**32 - 1) == 2**32 - 1 and check_seed("7") == 7


def _task(tmp_path: Path) -> str:
    path = tmp_path / "t.jsonl"
    rows = [{"input": f"q{i}?", "target": "a", "choices": ["a", "b"]} for i in range(40)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f"file:{path}"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "99"}, "all digits and would read as a study id"),
        ({"name": "a\x00b"}, "is not valid"),
        ({"name": "ok", "seed": 10**25}, "from 0 to 4294967295"),
        ({"name": "ok", "seed": -3}, "from 0 to 4294967295"),
        ({"name": "ok", "description": "nul \x00 inside"}, "The description contains a NUL"),
        ({"name": "ok", "config": {"strategies": "expert"}}, "n_rationales=2 but only 1"),
    ],
)
def test_a_study_with_bad_input_is_refused_before_anything_is_stored(
    db_path: Path, tmp_path: Path, kwargs: dict, message: str
) -> None:
    from teachlab.studies import list_studies

    name = kwargs.pop("name")
    with pytest.raises((ConfigError, DataError), match=message):
        create_study(name, _task(tmp_path), **kwargs)
    assert list_studies() == []


def test_deep_nesting_and_nul_bytes_are_refused_with_where_they_are() -> None:
    assert nesting_depth('{"a": [1, {"b": "[[[[["}]}') == 3  # brackets in strings do not count
    with pytest.raises(DataError, match=f"line 7 nests 100000 levels deep \\(at most {MAX_DEPTH}"):
        loads("[" * 100_000 + "]" * 100_000, "line 7")
    with pytest.raises(DataError, match="contains a NUL byte"):
        loads('{"input": "a\x00b"}', "line 2")
    assert loads('{"a": [[1]]}', "x") == {"a": [[1]]}


def test_a_task_file_with_a_deeply_nested_line_names_the_line(tmp_path: Path) -> None:
    from teachlab.tasks import load_task_file

    path = tmp_path / "deep.jsonl"
    good = [json.dumps({"input": f"q{i}", "target": "a"}) for i in range(30)]
    path.write_text("\n".join([*good[:3], "[" * 50_000 + "]" * 50_000, *good[3:]]) + "\n")
    with pytest.raises(DataError, match="line 4: nests 50000 levels deep"):
        load_task_file(path)
    path.write_bytes(b"\n".join(line.encode() for line in good) + b'\n{"input": "x\x00"}\n')
    with pytest.raises(DataError, match="contains a NUL byte"):
        load_task_file(path)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeated_wrong_passwords_lock_the_name_even_for_the_right_one() -> None:
    from fastapi import HTTPException

    clock = Clock()
    guard = LoginGuard({"ann": ("pw", "annotator"), "bob": ("x", "admin")}, clock=clock)
    assert guard("ann", "pw") is True
    for _ in range(MAX_FAILURES):
        assert guard("ann", "nope") is False
    with pytest.raises(HTTPException) as refused:
        guard("ann", "pw")
    assert refused.value.status_code == 429
    assert "Too many failed logins for 'ann'; try again in 30 s" in refused.value.detail
    assert guard("bob", "x") is True  # another name is not locked
    clock.now += LOCK_S + 1
    assert guard("ann", "pw") is True
    for _ in range(MAX_FAILURES):  # a second lockout lasts twice as long
        guard("ann", "nope")
    assert guard.wait_s("ann") == pytest.approx(2 * LOCK_S)
    assert guard("ghost", "pw") is False  # unknown names fail like wrong passwords


def test_login_tokens_expire() -> None:
    clock = Clock()
    tokens = ExpiringTokens(ttl_s=60, clock=clock)
    tokens["t1"] = "ann"
    assert tokens.get("t1") == "ann" and "t1" in tokens and tokens["t1"] == "ann"
    clock.now += 61
    assert tokens.get("t1") is None and "t1" not in tokens
    with pytest.raises(KeyError):
        tokens["t1"]
