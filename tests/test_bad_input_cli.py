"""Property-based bad input for the `zoo` command line: whatever the arguments, a run ends in a clean
exit (0 or a one-line error with exit code 2, or click's usage error), never a traceback, and a
refused command leaves the lake exactly as it was."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labeling.registry import PROPERTIES
from zoo.families import FAMILIES

WORDS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=24)
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def assert_clean_refusal(proc, before, after) -> None:
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text
    assert proc.returncode == 2, (proc.returncode, text)
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith(("error: ", "Error: ")), proc.stderr
    assert after == before


@st.composite
def bad_argv(draw) -> list[str]:
    word = draw(WORDS)
    kind = draw(st.sampled_from(["family", "n", "property", "show", "tag-at", "predict", "suite", "checkpoints",
                                 "format", "at"]))
    if kind == "family":
        fam = word if word not in FAMILIES else word + "?"
        return ["build", "--family", fam, "--n", "1"]
    if kind == "n":
        return ["build", "--family", "digits-mlp", "--n", str(draw(st.integers(-10**6, -1)))]
    if kind == "checkpoints":
        return ["build", "--family", "digits-mlp", "--n", "1", "--checkpoints", (word or ",") + ",x"]
    if kind == "property":
        prop = word if word not in PROPERTIES else word + "?"
        return ["label", "--properties", prop or ","]
    if kind == "show":
        return ["show", "no-such-" + word]
    if kind == "tag-at":
        return ["tag", "fresh", "--at", str(draw(st.integers(10**4, 10**9)))]
    if kind == "predict":
        return ["weightnet", "predict", "--run", "no-such-run-" + word]
    if kind == "suite":
        return ["evaluate", "--suite", "no-such-suite-" + word]
    if kind == "format":
        return ["sql", "SELECT 1", "--format", "no-such-" + word]
    return ["sql", "SELECT count(*) FROM models", "--at", "no-such-tag-" + word]


@SETTINGS
@given(argv=bad_argv())
def test_bad_arguments_end_in_one_line_and_leave_the_lake_alone(filled, zoo_cli, fingerprint, argv) -> None:
    before = fingerprint(filled)
    proc = zoo_cli(*argv, lake=filled)
    assert_clean_refusal(proc, before, fingerprint(filled))


@SETTINGS
@given(argv=st.lists(WORDS, max_size=5))
def test_random_argv_never_crashes(filled, zoo_cli, fingerprint, argv) -> None:
    if argv and argv[0] in {"build", "label", "ingest", "weightnet", "evaluate", "init", "export", "tag"}:
        argv = ["x" + argv[0], *argv[1:]]  # random words must not start real work or writes
    before = fingerprint(filled)
    proc = zoo_cli(*argv, lake=filled)
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text
    assert proc.returncode in (0, 2), (proc.returncode, text)
    assert fingerprint(filled) == before
