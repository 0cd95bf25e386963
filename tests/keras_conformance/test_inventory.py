"""Every Keras callback test case in scope is ported or listed as not ported; docs/migrating.md counts them."""

from __future__ import annotations

import importlib
import re
from collections import Counter
from pathlib import Path

from keras_conformance.helpers import INVENTORY, NOT_PORTED

HERE = Path(__file__).parent
MIGRATING = HERE.parents[1] / "docs" / "migrating.md"


def ported_cases() -> dict[str, str]:
    """Each ported Keras case and its outcome ("different" or "pending" wins over "same" when several tests port it)."""
    outcomes: dict[str, set[str]] = {}
    for path in sorted(HERE.glob("test_*.py")):
        module = importlib.import_module(f"keras_conformance.{path.stem}")
        for name, test in vars(module).items():
            if not name.startswith("test_"):
                continue
            for mark in getattr(test, "pytestmark", []):
                if mark.name == "keras":
                    outcomes.setdefault(mark.kwargs["case"], set()).add(mark.kwargs["outcome"])
    return {case: next(o for o in ("pending", "different", "same") if o in found) for case, found in outcomes.items()}


def test_every_keras_case_is_ported_or_listed_with_a_reason():
    ported = ported_cases()
    assert len(set(INVENTORY)) == len(INVENTORY)
    assert not set(ported) & set(NOT_PORTED), "a case is both ported and listed as not ported"
    assert set(ported) | set(NOT_PORTED) == set(INVENTORY), sorted(set(INVENTORY) - set(ported) - set(NOT_PORTED))
    assert all(reason for reason in NOT_PORTED.values())


def test_the_migrating_page_states_the_counts():
    counts = Counter(ported_cases().values())
    numbers = {
        "cases": len(INVENTORY),
        "ported": sum(counts.values()),
        "same": counts["same"],
        "different": counts["different"],
        "pending": counts["pending"],
        "not ported": len(NOT_PORTED),
    }
    text = MIGRATING.read_text()
    phrases = ["Keras test cases", "are ported", "pass as in Keras", "pass asserting a deliberate difference"]
    phrases += ["waits? for", "are not ported"]
    pattern = ".*?".join(r"\*\*(\d+)\*\*\s+" + r"\s+".join(phrase.split()) for phrase in phrases)
    sentence = re.search(pattern, text, re.DOTALL)
    assert sentence, "docs/migrating.md lost the sentence that counts the Keras cases"
    stated = dict(zip(numbers, map(int, sentence.groups())))
    assert stated == numbers
    for case in NOT_PORTED:  # each case not ported is named on the page, with its reason
        assert case.split("::")[-1] in text
